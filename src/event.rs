//! The event stream: every state change in Tandem is one [`Event`] with a sequence
//! number that increases strictly on each node, across restarts.
//!
//! This module is the single home of that stream. The control API, `tandem status`
//! and `tandem history` read it today; SNMP traps and Prometheus metrics subscribe to
//! the same [`EventLog`] so they can never disagree.
//!
//! Persistence: events are appended to `events.jsonl` in the state directory and
//! completed failover/switchover timelines to `timelines.jsonl`. Sequence numbers are
//! reserved in blocks in the `seq` file (written and fsynced before use), so a crash
//! can skip numbers but never repeat one. Both files are rotated by size
//! (`[cluster] events_max_bytes`, `events_keep`: `events.jsonl.1`, ...); reading them
//! back at start reads the rotated files too, so `since` and `history` see no gap.

pub mod story;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::rotate;

/// How many sequence numbers are reserved per write of the `seq` file.
const SEQ_BLOCK: u64 = 1000;
/// Events kept in memory for `events since` queries.
const MEMORY_EVENTS: usize = 10_000;
/// Timelines kept in memory for `history`.
const MEMORY_TIMELINES: usize = 500;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sequence file {path} is corrupt: {content:?}")]
    CorruptSeq { path: PathBuf, content: String },
}

/// What happened. The snake_case name is the `kind` on the wire and in the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DaemonStarted,
    DaemonStopping,
    NodeUp,
    NodeDown,
    NodeRestarted,
    PathUp,
    PathDown,
    NodeStandby,
    NodeOnline,
    GroupStarting,
    GroupStarted,
    GroupStopping,
    GroupStopped,
    GroupStartFailed,
    GroupStopFailed,
    GroupFailed,
    GroupMaintenanceOn,
    GroupMaintenanceOff,
    /// An administrator cleared a group's failures and block on a node (group, node,
    /// failures: the count in the restart window it reset, was_blocked).
    GroupCleared,
    /// The daemon reloaded its configuration file (applied: the changes taken live,
    /// needs_restart: those waiting for a restart, both comma-separated; digest: the
    /// file's cluster digest).
    ConfigReloaded,
    ResourceStarted,
    ResourceStopped,
    ResourceStartFailed,
    ResourceCheckFailed,
    ResourceRestarted,
    IpMoved,
    /// A `shared_disk` resource took its disk lease (group, resource, path, waited_ms).
    DiskLeaseAcquired,
    /// A `shared_disk` resource lost its disk lease: the group stops using the disk
    /// (group, resource, path, reason).
    DiskLeaseLost,
    FailoverStarted,
    FailoverCompleted,
    FailoverFailed,
    SwitchoverStarted,
    SwitchoverCompleted,
    SwitchoverFailed,
    SplitBrainSuspected,
    SplitBrainResolved,
    /// A mirror's replication link to a peer came up (fields: mirror, peer).
    MirrorConnected,
    /// A mirror's link to a peer went down (mirror, peer, reason).
    MirrorDisconnected,
    /// This copy became primary (mirror, generation).
    MirrorPromoted,
    /// This copy became secondary after a flush (mirror).
    MirrorDemoted,
    /// The node lost its lease and this primary holds new writes,
    /// `on_no_quorum = "suspend"` (mirror, epoch).
    MirrorIoSuspended,
    /// The node has its lease back at the same epoch: held writes go on (mirror, epoch).
    MirrorIoResumed,
    /// This copy may not become primary (mirror, reason).
    MirrorPromotionRefused,
    /// A sync peer was lost and is now Outdated; writes go on and are tracked (mirror, peer).
    MirrorPeerOutdated,
    /// Replication to a peer was paused or resumed by an administrator (mirror, peer).
    MirrorPaused,
    MirrorResumed,
    /// Both copies changed apart; no automatic resync (mirror, peer, reason).
    MirrorSplitBrain,
    /// A split brain was resolved at connect: by the policy or the administrator
    /// (mirror, peer, policy: the policy's name or `administrator`, kept and discarded:
    /// the nodes, blocks: the discarded copy's changed blocks, dump: the file that saved
    /// them on the discarded copy's node).
    MirrorSplitBrainResolved,
    /// A resync began (mirror, peer, direction, full, bytes).
    ResyncStarted,
    /// A resync finished (mirror, peer, direction, bytes, duration_ms).
    ResyncCompleted,
    /// A resync stopped before the end (mirror, peer, reason).
    ResyncFailed,
    /// An online verify finished (mirror, peer, bytes = out-of-sync bytes found).
    VerifyCompleted,
    /// This node can no longer reach a majority of the voters (votes, voters,
    /// reachable): it takes nothing, and its leases run out.
    QuorumLost,
    /// This node is in a partition with a majority of the voters again.
    QuorumGained,
    /// The replicated log committed a group's owner (group, owner, epoch).
    OwnershipCommitted,
    /// This node asked a previous owner's BMC to power it off (peer, group, epoch,
    /// delay_ms).
    FenceStarted,
    /// The BMC reports the node powered off (peer, method, duration_ms, groups).
    FenceSucceeded,
    /// Every fencing method failed: the node is NOT known to be off (peer, reason,
    /// groups). The new owner waits out the lease instead.
    FenceFailed,
    /// The configured watchdog cannot be opened or written (device, operation, error,
    /// reason): this node takes over and starts nothing, and stops what it runs.
    WatchdogUnavailable,
    /// The watchdog opened again after [`EventKind::WatchdogUnavailable`] (device).
    WatchdogAvailable,
    /// A step of a lost lease's fast stop failed (group, step: `floating_ip`,
    /// `mirror` or `freeze`, resource, reason): this node stops petting the watchdog.
    FastStopFailed,
    /// The owner's lease is running out and the group holds on a lost lease (all its
    /// mirrors `on_no_quorum = "suspend"`): fast-stopped and held, its writes
    /// suspended (group, epoch, reason).
    GroupSuspended,
    /// The lease came back at the epoch a held group was held at: resumed, its held
    /// writes complete (group, epoch, held_ms).
    GroupResumed,
    /// An administrator asked the daemon for an image update (url, slot: the one it
    /// writes).
    ImageUpdateStarted,
    /// The image was signed by a trusted key and its slot written; it boots next, on
    /// trial (url, slot, entry, bytes, key).
    ImageUpdateFinished,
    /// The update failed: download, signature or write (url, reason).
    ImageUpdateFailed,
    /// A peer's heartbeats carry another configuration digest than this node's (peer,
    /// digest: theirs, local_digest): the files differ in what nodes must share.
    ConfigMismatch,
    /// A peer's configuration digest agrees with this node's again (peer, digest).
    ConfigAgreed,
    /// A primary was declared dead: what this node's copy of its mirror may lack, as
    /// the primary last reported (mirror, peer: the primary, bytes, duration_ms: the
    /// age of the oldest write not acknowledged, reported_ms). After a site disaster it
    /// is the DR copy's recovery point.
    RecoveryPoint,
    /// An action through the web console or an API token, or a console login (user,
    /// role, action, target, outcome: `allowed` or `refused`, reason when refused).
    Audit,
}

impl EventKind {
    /// The snake_case name.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Structured facts of an event: group, resource, peer, reason, duration_ms, ...
pub type Fields = BTreeMap<String, String>;

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing on this node, across restarts.
    pub seq: u64,
    /// The node that recorded the event.
    pub node: String,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub kind: EventKind,
    pub fields: Fields,
}

/// Builds [`Fields`] from pairs.
pub fn fields<const N: usize>(pairs: [(&str, String); N]) -> Fields {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Why a group moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// The owner went silent on every heartbeat path.
    NodeLost,
    /// A resource kept failing after its local restarts.
    ResourceFailed,
    /// An administrator asked for it (switchover, standby).
    Manual,
    /// Automatic switchback to the preferred node.
    Switchback,
    /// Two owners met after a partition healed; the preferred one kept the group.
    SplitBrain,
    /// First placement of the group.
    Initial,
}

/// One resource start or stop within a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineStep {
    pub resource: String,
    /// "start", "stop", or a lost lease's fast stop step: "fast_stop_floating_ip",
    /// "fast_stop_mirror" or "fast_stop_freeze".
    pub action: String,
    pub at_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What kind of move a timeline tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// This node took the group over after a failure.
    Failover,
    /// An administrator (or automatic switchback) moved the group here.
    Switchover,
    /// The stop side of a move, recorded on the node that gave the group up.
    Release,
}

impl std::fmt::Display for MoveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MoveKind::Failover => "failover",
            MoveKind::Switchover => "switchover",
            MoveKind::Release => "release",
        })
    }
}

/// The story of one failover or switchover, as recorded on the node that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub group: String,
    pub kind: MoveKind,
    pub reason: MoveReason,
    pub from_node: Option<String>,
    pub to_node: String,
    /// When the failure happened, if known: the lost owner's last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ms: Option<u64>,
    /// When the failure was detected (or the request was made).
    pub detected_ms: u64,
    /// When this node decided to take the group.
    pub decided_ms: u64,
    pub steps: Vec<TimelineStep>,
    /// The first passing check after the start.
    pub first_check_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    /// "completed" or "failed: ...".
    pub outcome: String,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Inner {
    next_seq: u64,
    /// Sequence numbers below this are reserved, or asked to be ([`writer::Writer`]).
    reserved_until: u64,
    recent: VecDeque<Event>,
    timelines: VecDeque<Timeline>,
    /// The files' writer thread; none for an in-memory log.
    files: Option<writer::Writer>,
}

/// The ordered, persistent event stream of one node. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    node: String,
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`, continuing the sequence after the last
    /// reserved block; its files rotate by `policy`.
    pub fn open(node: &str, dir: &Path, policy: rotate::Policy) -> Result<EventLog, EventError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EventError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let seq_path = dir.join("seq");
        let start = match std::fs::read_to_string(&seq_path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| EventError::CorruptSeq {
                    path: seq_path.clone(),
                    content: s.chars().take(40).collect(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io(&seq_path)(e)),
        };
        let events_path = dir.join("events.jsonl");
        let timelines_path = dir.join("timelines.jsonl");
        let recent = read_tail::<Event>(&events_path, MEMORY_EVENTS);
        let timelines = read_tail::<Timeline>(&timelines_path, MEMORY_TIMELINES);
        let open = |p: &Path| rotate::RotatingFile::open(p, policy).map_err(io(p));
        // The first block is reserved here, so no emit waits for it.
        let reserved_until = start + SEQ_BLOCK;
        writer::write_durably(&seq_path, &reserved_until.to_string()).map_err(io(&seq_path))?;
        let files = writer::Writer::spawn(
            open(&events_path)?,
            open(&timelines_path)?,
            &seq_path,
            reserved_until,
        )
        .map_err(io(dir))?;
        let inner = Inner {
            next_seq: start,
            reserved_until,
            recent,
            timelines,
            files: Some(files),
        };
        let (tx, _) = broadcast::channel(4096);
        let log = EventLog {
            node: node.to_string(),
            inner: Arc::new(Mutex::new(inner)),
            tx,
        };
        Ok(log)
    }

    /// A log that keeps events in memory only (tests, simulations).
    pub fn in_memory(node: &str) -> EventLog {
        let (tx, _) = broadcast::channel(4096);
        EventLog {
            node: node.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                reserved_until: u64::MAX,
                recent: VecDeque::new(),
                timelines: VecDeque::new(),
                files: None,
            })),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event: assigns the next sequence number, queues it for the file,
    /// logs it and hands it to every subscriber. The next block of sequence numbers is
    /// reserved half a block ahead; only if that reservation is not durable by the time
    /// it is needed does this wait for it (a restart never reuses a number).
    pub fn emit(&self, kind: EventKind, fields: Fields) -> Event {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(files) = &inner.files {
            if inner.next_seq + SEQ_BLOCK / 2 >= inner.reserved_until {
                let limit = inner.reserved_until + SEQ_BLOCK;
                files.reserve(limit);
                inner.reserved_until = limit;
            }
            if inner.next_seq >= files.reserved() {
                files.flush();
            }
        }
        let event = Event {
            seq: inner.next_seq,
            node: self.node.clone(),
            time_ms: unix_ms(),
            kind,
            fields,
        };
        inner.next_seq += 1;
        if let Some(files) = &inner.files {
            if let Ok(mut line) = serde_json::to_vec(&event) {
                line.push(b'\n');
                files.event(line);
            }
        }
        inner.recent.push_back(event.clone());
        if inner.recent.len() > MEMORY_EVENTS {
            inner.recent.pop_front();
        }
        drop(guard);
        tracing::info!(seq = event.seq, kind = %kind.name(), fields = ?event.fields, "event");
        let _ = self.tx.send(event.clone());
        event
    }

    /// Events with `seq > since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        self.lock()
            .recent
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest sequence number handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq.saturating_sub(1)
    }

    /// A live feed of new events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Stores a finished timeline.
    pub fn record_timeline(&self, t: Timeline) {
        let mut inner = self.lock();
        if let Some(files) = &inner.files {
            if let Ok(mut line) = serde_json::to_vec(&t) {
                line.push(b'\n');
                files.timeline(line);
            }
        }
        inner.timelines.push_back(t);
        if inner.timelines.len() > MEMORY_TIMELINES {
            inner.timelines.pop_front();
        }
    }

    /// Finished timelines, oldest first.
    pub fn timelines(&self) -> Vec<Timeline> {
        self.lock().timelines.iter().cloned().collect()
    }

    /// Waits until every event and timeline emitted so far is in its file.
    pub fn flush(&self) {
        if let Some(files) = &self.lock().files {
            files.flush();
        }
    }
}

/// The last `keep` parseable lines of a JSONL file and its rotated files (read newest
/// first, only as many as needed); a torn last line is skipped.
fn read_tail<T: for<'de> Deserialize<'de>>(path: &Path, keep: usize) -> VecDeque<T> {
    let mut out = VecDeque::new();
    for file in rotate::oldest_first(path).iter().rev() {
        if out.len() >= keep {
            break;
        }
        let older = read_file_tail::<T>(file, keep - out.len());
        out = older.into_iter().chain(out).collect();
    }
    out
}

/// The last `keep` parseable lines of one JSONL file.
fn read_file_tail<T: for<'de> Deserialize<'de>>(path: &Path, keep: usize) -> VecDeque<T> {
    let mut out = VecDeque::new();
    let Ok(f) = File::open(path) else {
        return out;
    };
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<T>(&line) {
            out.push_back(v);
            if out.len() > keep {
                out.pop_front();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn seq_strictly_increases_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        let e1 = log.emit(EventKind::DaemonStarted, Fields::new());
        let e2 = log.emit(EventKind::NodeUp, fields([("peer", "b".into())]));
        assert!(e2.seq > e1.seq);
        drop(log);
        let log = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        let e3 = log.emit(EventKind::DaemonStarted, Fields::new());
        assert!(e3.seq > e2.seq, "{} > {}", e3.seq, e2.seq);
        // history survives the restart
        let all = log.since(0, 100);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].fields["peer"], "b");
    }

    #[test]
    fn blocks_reserved_ahead_keep_numbers_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        let mut last = 0;
        for _ in 0..(SEQ_BLOCK * 5 / 2) {
            last = log.emit(EventKind::NodeUp, Fields::new()).seq;
        }
        log.flush();
        let lines = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(lines.lines().count() as u64, SEQ_BLOCK * 5 / 2);
        // A crash now (no clean close): the next run starts above every number used.
        let reserved: u64 = std::fs::read_to_string(dir.path().join("seq"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(reserved > last, "{reserved} > {last}");
        std::mem::forget(log);
        let again = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        assert!(again.emit(EventKind::DaemonStarted, Fields::new()).seq > last);
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        log.emit(EventKind::DaemonStarted, Fields::new());
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap();
        f.write_all(b"{\"seq\":99,\"no").unwrap();
        let log = EventLog::open("a", dir.path(), rotate::Policy::DEFAULT).unwrap();
        assert_eq!(log.since(0, 10).len(), 1);
    }

    #[test]
    fn rotated_files_keep_the_sequence_whole_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let policy = rotate::Policy {
            max_bytes: 4096,
            keep: 100,
        };
        let log = EventLog::open("a", dir.path(), policy).unwrap();
        let n = 300;
        for _ in 0..n {
            log.emit(EventKind::NodeUp, fields([("peer", "b".into())]));
        }
        log.flush();
        let path = dir.path().join("events.jsonl");
        let files = rotate::oldest_first(&path);
        assert!(files.len() > 3, "rotated: {files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 4096);
        }
        drop(log);
        let log = EventLog::open("a", dir.path(), policy).unwrap();
        let seqs: Vec<u64> = log.since(0, usize::MAX).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "no gap, no repeat");
        let next = log.emit(EventKind::DaemonStarted, Fields::new()).seq;
        assert!(next > n);
        assert_eq!(
            log.since(n - 2, 10).len(),
            3,
            "`since` reads on past the restart"
        );
    }

    #[test]
    fn corrupt_seq_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seq"), "garbage").unwrap();
        assert!(matches!(
            EventLog::open("a", dir.path(), rotate::Policy::DEFAULT),
            Err(EventError::CorruptSeq { .. })
        ));
    }

    #[test]
    fn kind_names_are_snake_case() {
        assert_eq!(
            EventKind::SplitBrainSuspected.name(),
            "split_brain_suspected"
        );
    }
}
