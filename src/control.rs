//! Control requests and their typed errors: what the API (and through it the CLI) asks
//! of the daemon, and the ways the daemon can say no. The API maps each
//! [`ControlError`] variant to its own HTTP status ([`ControlError::http_status`]) and
//! the CLI to its own exit code (see `docs/API.md`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::packet::LocalGroupState;
use crate::mirror::plan::{Plan, Target};
use crate::mirror::replica::dump::{DumpError, DumpInfo};
use crate::mirror::replica::MirrorError;
use crate::placement::policy::PlacementError;
use crate::status::Status;

/// Why the daemon did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", content = "error", rename_all = "snake_case")]
pub enum ControlError {
    /// No such group, node or mirror (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the cluster's rules refuse it (HTTP 409).
    #[error("{0}")]
    Refused(String),
    /// The request clashes with the current state: already done, or busy (HTTP 422).
    #[error("{0}")]
    Conflict(String),
    /// A group is starting or stopping somewhere: the same request may succeed once it
    /// settles (HTTP 423). A switchover waits this out within its timeout.
    #[error("{0}")]
    Busy(String),
    /// The request was carried out but did not finish in time (HTTP 504).
    #[error("{0}")]
    Timeout(String),
    /// The daemon cannot take requests now (shutting down) (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

impl ControlError {
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ControlError::NotFound(_) => 404,
            ControlError::Refused(_) => 409,
            ControlError::Conflict(_) => 422,
            ControlError::Busy(_) => 423,
            ControlError::Timeout(_) => 504,
            ControlError::Unavailable(_) => 503,
        }
    }

    /// The error an HTTP status stands for (the CLI's side of [`Self::http_status`]);
    /// None for statuses no control error uses.
    pub fn from_http(status: u16, msg: String) -> Option<ControlError> {
        Some(match status {
            404 => ControlError::NotFound(msg),
            409 => ControlError::Refused(msg),
            422 => ControlError::Conflict(msg),
            423 => ControlError::Busy(msg),
            504 => ControlError::Timeout(msg),
            503 => ControlError::Unavailable(msg),
            _ => return None,
        })
    }

    /// The daemon's main loop is gone.
    pub fn shutting_down() -> ControlError {
        ControlError::Unavailable("daemon is shutting down".into())
    }
}

impl From<PlacementError> for ControlError {
    fn from(e: PlacementError) -> ControlError {
        let msg = e.to_string();
        match e {
            PlacementError::UnknownGroup(_) | PlacementError::UnknownNode(_) => {
                ControlError::NotFound(msg)
            }
            PlacementError::AlreadyThere { .. } => ControlError::Conflict(msg),
            PlacementError::Busy { .. } => ControlError::Busy(msg),
            PlacementError::NodeNotLive(_)
            | PlacementError::NotEligible { .. }
            | PlacementError::InMaintenance(_)
            | PlacementError::NoTarget(_)
            | PlacementError::NoQuorum(_)
            | PlacementError::NoQuorumForNode(_)
            | PlacementError::NotLocal(_) => ControlError::Refused(msg),
        }
    }
}

impl From<MirrorError> for ControlError {
    fn from(e: MirrorError) -> ControlError {
        let msg = e.to_string();
        match e {
            MirrorError::UnknownPeer(_)
            | MirrorError::NotACopy(_)
            | MirrorError::Dump(DumpError::NotFound(_)) => ControlError::NotFound(msg),
            MirrorError::Shutdown => ControlError::Unavailable(msg),
            MirrorError::Refused(_)
            | MirrorError::NotPrimary
            | MirrorError::Io(_)
            | MirrorError::Volume(_)
            | MirrorError::Meta(_)
            | MirrorError::Export(_)
            | MirrorError::Size { .. }
            | MirrorError::Connect(_)
            | MirrorError::StaleEpoch(_)
            | MirrorError::Dump(_) => ControlError::Refused(msg),
        }
    }
}

/// Reply channel of a control request.
pub type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

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
    /// `tandem group clear`: forget the group's failures and block on this node.
    Clear {
        group: String,
        node: Option<String>,
        reply: Reply<()>,
    },
    /// An operation on a replicated volume (`tandem mirror ...`).
    Mirror {
        mirror: String,
        action: MirrorAction,
        /// One peer, or every peer; for [`MirrorAction::Resolve`], the node to keep.
        peer: Option<String>,
        reply: Reply<()>,
    },
    /// The split-brain dumps of this node's copy of a mirror, oldest first.
    SplitBrainDumps {
        mirror: String,
        reply: Reply<Vec<DumpInfo>>,
    },
    /// The link sizing of a mirror from this node's write-rate history.
    MirrorPlan {
        mirror: String,
        target: Target,
        reply: Reply<Plan>,
    },
    /// One split-brain dump's file name and bytes (None: the newest).
    SplitBrainDump {
        mirror: String,
        name: Option<String>,
        reply: Reply<(String, Vec<u8>)>,
    },
    /// Run with a new configuration (parsed and validated): what needs no restart is
    /// applied, the rest is named (`SIGHUP`, `tandem config reload`, `PUT /v1/config`).
    Reload {
        config: Box<crate::config::Config>,
        reply: Reply<crate::config::reload::ReloadOutcome>,
    },
}

/// Hands a request to the daemon's main loop and waits for its answer.
pub async fn ask<T>(
    requests: &mpsc::Sender<Request>,
    make: impl FnOnce(Reply<T>) -> Request,
) -> Result<T, ControlError> {
    let (tx, rx) = oneshot::channel();
    requests
        .send(make(tx))
        .await
        .map_err(|_| ControlError::shutting_down())?;
    rx.await.map_err(|_| ControlError::shutting_down())?
}

/// Reads and validates the configuration file at `path` (on the blocking pool, never
/// on the event loop) and asks the daemon to run with it: `SIGHUP` and `POST
/// /v1/config/reload`. A file that does not pass `config check` is refused
/// ([`ControlError::Conflict`]) and nothing changes.
pub async fn reload_file(
    path: &Path,
    requests: &mpsc::Sender<Request>,
) -> Result<crate::config::reload::ReloadOutcome, ControlError> {
    let p = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || crate::config::Config::load(&p))
        .await
        .map_err(|e| ControlError::Unavailable(format!("reading the configuration: {e}")))?;
    let config = loaded.map_err(|e| ControlError::Conflict(refused_config(&e)))?;
    ask(requests, |reply| Request::Reload {
        config: Box::new(config),
        reply,
    })
    .await
}

/// The message of a configuration refused by a reload.
pub fn refused_config(why: &dyn std::fmt::Display) -> String {
    format!("configuration refused, nothing changed: {why}")
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
    /// Resolve a split brain: the copy on the given node survives, every copy in split
    /// brain with it discards its changes (saved to a dump first) and is resynced fully.
    Resolve,
}

/// Whether a switchover to `target` has settled: the group runs on `target` and
/// nowhere else (`Some(Ok)`), or cannot get there (`Some(Err)`); None while it moves.
/// `epoch_before` is the register's epoch before the request: with a quorum the
/// register names the old owner until the log commits the move, and that is not
/// "placed elsewhere"; only a newer decision for another node is.
pub fn switchover_settled(
    status: &Status,
    group: &str,
    target: &str,
    epoch_before: u64,
) -> Option<Result<(), ControlError>> {
    let g = status.groups.iter().find(|g| g.name == group)?;
    let on_target = g.states.get(target).copied();
    let elsewhere = g
        .states
        .iter()
        .any(|(n, s)| n != target && *s != LocalGroupState::Stopped);
    match on_target {
        Some(LocalGroupState::Running) if !elsewhere => Some(Ok(())),
        Some(LocalGroupState::Failed) => Some(Err(ControlError::Refused(format!(
            "group `{group}` failed on `{target}`"
        )))),
        _ if g.epoch > epoch_before && g.owner.as_deref().is_some_and(|o| o != target) => {
            Some(Err(ControlError::Conflict(format!(
                "group `{group}` was placed on `{}` instead",
                g.owner.clone().unwrap_or_default()
            ))))
        }
        _ => None,
    }
}

/// Whether a standby change proposed to the log (quorum mode) has settled: the
/// committed register has `node` in standby exactly when `on` (`Some(Ok)`), or it
/// did not commit before the deadline (`Some(Err(Timeout))`); None while it waits.
/// The proposal being accepted says nothing: a leader change may drop it.
pub fn standby_settled(
    node: &str,
    on: bool,
    committed: Option<bool>,
    expired: bool,
) -> Option<Result<(), ControlError>> {
    match committed {
        Some(c) if c == on => Some(Ok(())),
        _ if expired => Some(Err(ControlError::Timeout(format!(
            "the log did not commit node `{node}` {} in time",
            if on { "in standby" } else { "online" }
        )))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::policy::{GroupStatus, GroupSummary};

    fn status(owner: &str, epoch: u64, states: &[(&str, LocalGroupState)]) -> Status {
        Status {
            groups: vec![GroupStatus {
                name: "g".into(),
                owner: Some(owner.into()),
                epoch,
                maintenance: false,
                local_state: LocalGroupState::Stopped,
                blocked: false,
                recent_failures: 0,
                reason: None,
                states: states.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
                summary: GroupSummary::Running,
            }],
            ..Status::default()
        }
    }

    #[test]
    fn a_switchover_waits_while_the_log_has_not_committed_the_move_yet() {
        use LocalGroupState::*;
        // The register still names the old owner at the old epoch: not settled, and
        // not "placed elsewhere" (the CI failure this pins).
        let before = status("n2", 2, &[("n2", Running), ("n3", Stopped)]);
        assert_eq!(switchover_settled(&before, "g", "n3", 2), None);
        let moving = status("n3", 3, &[("n2", Stopped), ("n3", Starting)]);
        assert_eq!(switchover_settled(&moving, "g", "n3", 2), None);
        let done = status("n3", 3, &[("n2", Stopped), ("n3", Running)]);
        assert_eq!(switchover_settled(&done, "g", "n3", 2), Some(Ok(())));
        let elsewhere = status("n1", 3, &[("n1", Starting), ("n2", Stopped)]);
        assert!(matches!(
            switchover_settled(&elsewhere, "g", "n3", 2),
            Some(Err(ControlError::Conflict(_)))
        ));
    }

    #[test]
    fn a_standby_request_is_done_when_the_log_commits_it_not_when_proposed() {
        assert_eq!(standby_settled("n2", true, Some(false), false), None);
        assert_eq!(standby_settled("n2", true, Some(true), false), Some(Ok(())));
        assert_eq!(
            standby_settled("n2", false, Some(false), true),
            Some(Ok(()))
        );
        assert!(matches!(
            standby_settled("n2", true, Some(false), true),
            Some(Err(ControlError::Timeout(_)))
        ));
        assert!(matches!(
            standby_settled("n2", true, None, true),
            Some(Err(ControlError::Timeout(_)))
        ));
    }

    #[test]
    fn no_quorum_for_a_node_is_a_refusal_like_for_a_group() {
        let e = ControlError::from(PlacementError::NoQuorumForNode("n2".into()));
        assert!(matches!(e, ControlError::Refused(_)));
        assert_eq!(e.http_status(), 409);
    }

    #[test]
    fn a_busy_group_is_its_own_kind_of_no_with_its_own_status() {
        let e = ControlError::from(PlacementError::Busy {
            group: "g".into(),
            node: "n1".into(),
            state: LocalGroupState::Starting,
        });
        assert!(matches!(e, ControlError::Busy(_)));
        assert_eq!(
            ControlError::from_http(e.http_status(), e.to_string()),
            Some(e)
        );
    }
}
