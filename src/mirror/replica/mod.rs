//! The replicated volume: a local [`Volume`] whose writes also reach one or more peer
//! copies over authenticated TCP links, DRBD-style. One copy is primary and serves the
//! [`Export`]; the others are secondaries that apply the primary's writes in order.
//! Sync peers complete a write only once they applied it; async peers are fed by a
//! bounded queue. What a peer cannot take goes to its dirty bitmap and is resynced when
//! it is back. On connect, the pure [`crate::mirror::connect`] plan (from both copies'
//! generations, disk states and roles) decides who resyncs from whom; this module
//! applies it.
//!
//! Layout: [`core`] holds the pure decisions (sequence numbers, queue accounting, the
//! resync planner, verify comparison); [`meta`] the durable metadata; [`link`] the
//! connection tasks; `resolve` split-brain recovery and [`dump`] its dumps; this
//! module the shared state, the write path and the admin API.
//!
//! Durability rules (DRBD terms in brackets): the activity log is persisted before a
//! write to a cold 4 MiB extent, and an extent leaves it only after a local fdatasync
//! and a Flush acknowledged by the sync peers, so a crashed primary resyncs at most the
//! log's extents. Writes a peer applied but has not flushed yet stay in a per-peer list
//! [transfer log] until a Flush or FUA write covers them (a barrier goes out every
//! 2 s); if the link drops first they are marked in that peer's bitmap, together
//! with everything unacknowledged.
//!
//! A brand-new mirror (no metadata on either side, generation 0) assumes both backing
//! stores start identical (new sparse files, or zeroed devices), like DRBD's
//! `new-current-uuid --clear-bitmap`; a fresh copy joining a mirror that already has
//! data gets a full resync (which skips unused space).

pub mod core;
pub mod dump;
pub mod link;
pub mod meta;
mod reconcile;
mod resolve;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::Instrument;

use crate::config::{Config, MetadataKind, MirrorConfig, ReplicationMode};
use crate::event::{fields, unix_ms, EventKind, EventLog};
use crate::mirror::bitmap::{ActivityChange, ActivityLog, DirtyBitmap, EXTENT_BYTES};
use crate::mirror::connect::{self, Blocks, Refusal, Resync};
use crate::mirror::generation::{
    promotion_refusal, DiskState, Generations, OwnershipEpoch, SplitBrainPolicy,
};
use crate::mirror::reconcile::Unproven;
use crate::mirror::schedule::{PauseWindow, ScheduleState};
use crate::mirror::status::{
    CompressionStatus, LinkDownCause, LinkState, MirrorPeerStatus, MirrorRole, MirrorStatus,
    ResyncDirection, ResyncStatus, VerifyStatus,
};
use crate::mirror::volume::{Volume, VolumeError};
use crate::mirror::wire::compress::{Compress, CompressCounters};
use crate::mirror::wire::{CopyState, Frame, MAX_DATA};
use crate::mirror::{Export, ExportError, Extent};

use self::core::{
    admission, Admission, EpochGuard, EpochVerdict, Op, PeerCore, ResyncSource, Route, StaleEpoch,
    VerifyRun, WriteGate,
};
use self::meta::{CopyMeta, Loaded, MetaError, MetaPlacement, MetaStore};

/// Extents the activity log keeps hot (4 MiB each, DRBD's default count: a crash
/// resyncs at most ~4.8 GiB; fewer means a flush round trip on more evictions).
pub const AL_EXTENTS: usize = 1237;
/// How often peers holding applied-but-unflushed writes get a Flush (barrier).
const BARRIER_INTERVAL: Duration = Duration::from_secs(2);
/// How often changed bitmaps are persisted.
const BITMAP_PERSIST_INTERVAL: Duration = Duration::from_millis(500);

/// Everything one node needs to run one mirror.
#[derive(Debug, Clone)]
pub struct MirrorSpec {
    pub name: String,
    pub cluster: String,
    pub local_node: String,
    pub key: Vec<u8>,
    pub backing: PathBuf,
    pub size: Option<u64>,
    /// The mirror's state directory: external metadata, split-brain dumps.
    pub meta_dir: PathBuf,
    /// Where the metadata lives (the state directory, or the end of the backing).
    pub metadata: MetaPlacement,
    pub listen: SocketAddr,
    pub peers: Vec<PeerSpec>,
    pub split_brain: SplitBrainPolicy,
    /// Sync primary that loses a peer: hold writes until `peer_outdated` (true in the
    /// daemon; tests may turn it off).
    pub fencing: bool,
}

/// One peer copy and the link to it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub node: String,
    pub address: SocketAddr,
    pub mode: ReplicationMode,
    pub rate_limit: Option<u64>,
    pub queue_bytes: u64,
    pub lag_budget: Option<Duration>,
    pub encrypt: bool,
    /// Compress payloads on the link (negotiated in the handshake).
    pub compress: Compress,
    /// Drop the link after this long without a frame from the peer.
    pub timeout: Duration,
}

/// The state directory of mirror `name`: `<state_dir>/mirror/<name>`.
pub fn state_dir_of(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("mirror").join(name)
}

impl MirrorSpec {
    /// The spec of mirror `m` of `cfg` on `local_node`; its state directory is
    /// `<state_dir>/mirror/<name>`, its metadata where [`Config::mirror_metadata`] says.
    pub fn from_config(
        m: &MirrorConfig,
        cfg: &Config,
        local_node: &str,
        key: &[u8],
    ) -> Result<MirrorSpec, MirrorError> {
        let listen = *m
            .addresses
            .get(local_node)
            .ok_or_else(|| MirrorError::NotACopy(local_node.to_string()))?;
        let mut peers = Vec::new();
        for (peer, link) in m.links_of(local_node) {
            let address = *m
                .addresses
                .get(peer)
                .ok_or_else(|| MirrorError::UnknownPeer(peer.to_string()))?;
            peers.push(PeerSpec {
                node: peer.to_string(),
                address,
                mode: link.mode,
                rate_limit: link.rate_limit.map(|r| r.0),
                queue_bytes: link.queue.0,
                lag_budget: link.lag_budget,
                encrypt: link.encrypt,
                compress: link.compress,
                timeout: link.timeout,
            });
        }
        Ok(MirrorSpec {
            name: m.name.clone(),
            cluster: cfg.cluster.name.clone(),
            local_node: local_node.to_string(),
            key: key.to_vec(),
            backing: m.backing.clone(),
            size: m.size.map(|s| s.0),
            meta_dir: state_dir_of(&cfg.cluster.state_dir, &m.name),
            metadata: match cfg.mirror_metadata(m).0 {
                MetadataKind::External => MetaPlacement::External,
                MetadataKind::Internal => MetaPlacement::Internal {
                    peer_slots: meta::convert::internal_peer_slots(m),
                },
            },
            listen,
            peers,
            split_brain: m.split_brain,
            fencing: true,
        })
    }
}

/// What can go wrong with a mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Promotion (or another role change) is not allowed now.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0:?} is not a peer of this mirror")]
    UnknownPeer(String),
    #[error("node {0:?} holds no copy of this mirror (no address)")]
    NotACopy(String),
    #[error("backing store: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("volume I/O: {0}")]
    Export(#[from] ExportError),
    #[error("this copy is not primary")]
    NotPrimary,
    #[error("the mirror is shutting down")]
    Shutdown,
    #[error("the backing store has {actual} bytes, the mirror needs {wanted}")]
    Size { wanted: u64, actual: u64 },
    /// The copies stay apart on connect.
    #[error(transparent)]
    Connect(#[from] Refusal),
    /// A primary of an older ownership epoch than one this copy followed (either side).
    #[error(transparent)]
    StaleEpoch(#[from] StaleEpoch),
    /// The blocks a split-brain resolution discards could not be saved (nothing was
    /// overwritten), or a dump cannot be read.
    #[error("split-brain dump: {0}")]
    Dump(#[from] dump::DumpError),
}

/// How a waited-for replicated operation ended on one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerOutcome {
    Acked,
    Lost,
}

/// The connection as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Connecting,
    Connected,
    Disconnected,
    SplitBrain,
    Refused,
}

/// The target side of a running resync.
#[derive(Debug, Clone)]
struct TargetRun {
    full: bool,
    total_bytes: u64,
    done_bytes: u64,
    started: Instant,
    started_ms: u64,
}

struct PeerState {
    spec: PeerSpec,
    core: PeerCore,
    conn: Conn,
    admin_down: bool,
    peer_disk: Option<DiskState>,
    peer_primary: bool,
    /// The running session's frame queue (in order, one TCP connection).
    tx: Option<mpsc::UnboundedSender<Frame>>,
    /// Increases per session; stale session callbacks are ignored.
    session: u64,
    /// Ends the running session (admin disconnect, split brain, shutdown).
    end_session: Option<Arc<Notify>>,
    /// Why this node ends the session, when not an administrator's disconnect.
    end_cause: Option<LinkDownCause>,
    waiters: HashMap<u64, oneshot::Sender<PeerOutcome>>,
    resync_source: Option<ResyncSource>,
    resync_end_sent: bool,
    resync_target: Option<TargetRun>,
    resync_source_started_ms: u64,
    verify: Option<VerifyRun>,
    verify_status: Option<VerifyStatus>,
    /// Wakes the session's resync/verify driver.
    kick: Arc<Notify>,
    replicated_bytes: u64,
    resynced_bytes: u64,
    resyncs_completed: u64,
    /// The protocol version the latest authenticated link negotiated.
    protocol: Option<u16>,
    /// Payload bytes sent to the peer before and after compression (every session).
    compression: Arc<CompressCounters>,
    refused_count: u64,
    /// The last epoch refusal on this link (reported once, not on every retry).
    epoch_refusal: Option<StaleEpoch>,
    /// This copy resyncs the union of both sides' bitmaps to the peer and waits for
    /// the peer's (`BitmapEnd`) before it starts.
    awaiting_bitmap: bool,
    /// The peer's current generation, from its last `State`.
    peer_generation: u64,
    /// Blocks the peer's bitmap held when it sent it (reported with the resync).
    peer_marked_blocks: u64,
    /// What stayed apart and what was reported of split brains (see `resolve`).
    split: resolve::PeerSplit,
}

struct State {
    primary: bool,
    disk: DiskState,
    gens: Generations,
    /// The ownership-epoch rule: the highest epoch followed, the own while primary.
    epoch: EpochGuard,
    al: ActivityLog,
    peers: BTreeMap<String, PeerState>,
    frozen: BTreeSet<String>,
    /// New writes are held: this node lost its lease (`on_no_quorum = "suspend"`).
    suspended: bool,
    inflight_writes: u64,
    /// Application writes waiting in admission (fencing or suspension).
    held_writes: u64,
    read_bytes: u64,
    written_bytes: u64,
    shutting_down: bool,
    /// The next operation number, while primary (one numbering for every peer).
    next_seq: u64,
    /// As secondary: the ranges applied that no peer-ack covers yet.
    unproven: Unproven,
    /// As secondary: the primary whose writes `unproven` holds.
    followed: Option<String>,
    /// As primary: the last peer-ack sent to each peer.
    peer_acks_sent: BTreeMap<String, u64>,
    /// Links paused on a schedule: their windows and where the schedule stands.
    schedules: BTreeMap<String, (Vec<PauseWindow>, ScheduleState)>,
}

impl State {
    /// Whether this copy may (still) be a resync source toward `peer`: never toward a
    /// primary, and a secondary not while another primary is connected (a copy takes
    /// resyncs from its primary). Checked when a resync is planned and again when it
    /// begins: a source demoted, or a target promoted, in between drops it.
    fn may_resync_to(&self, peer: &str) -> bool {
        let other_primary = self
            .peers
            .iter()
            .any(|(n, p)| n != peer && p.peer_primary && p.conn == Conn::Connected);
        let peer_primary = self.peers.get(peer).is_some_and(|p| p.peer_primary);
        !peer_primary && (self.primary || !other_primary)
    }

    /// A copy opened as secondary, with what its metadata says.
    fn secondary(
        disk: DiskState,
        gens: Generations,
        epoch: OwnershipEpoch,
        al: ActivityLog,
        peers: BTreeMap<String, PeerState>,
    ) -> State {
        State {
            primary: false,
            disk,
            gens,
            epoch: EpochGuard::new(epoch),
            al,
            peers,
            frozen: BTreeSet::new(),
            suspended: false,
            inflight_writes: 0,
            held_writes: 0,
            read_bytes: 0,
            written_bytes: 0,
            shutting_down: false,
            next_seq: 1,
            unproven: Unproven::new(),
            followed: None,
            peer_acks_sent: BTreeMap::new(),
            schedules: BTreeMap::new(),
        }
    }

    fn copy_meta(&self, size_bytes: u64) -> CopyMeta {
        CopyMeta {
            size_bytes,
            // SyncSource is an up-to-date copy that happens to be sending.
            disk: match self.disk {
                DiskState::SyncSource => DiskState::UpToDate,
                d => d,
            },
            generations: self.gens.clone(),
            epoch: self.epoch.highest(),
        }
    }

    fn shown_disk(&self) -> DiskState {
        if self.disk == DiskState::UpToDate
            && self.peers.values().any(|p| p.resync_source.is_some())
        {
            DiskState::SyncSource
        } else {
            self.disk
        }
    }

    fn peer(&mut self, name: &str) -> Result<&mut PeerState, MirrorError> {
        self.peers
            .get_mut(name)
            .ok_or_else(|| MirrorError::UnknownPeer(name.to_string()))
    }
}

/// A replicated volume on this node.
pub struct Mirror {
    spec: MirrorSpec,
    events: EventLog,
    volume: Volume,
    size: u64,
    meta: MetaStore,
    origin: Instant,
    st: Mutex<State>,
    /// Application writes hold it shared from their local write until their frames are
    /// queued; a resync chunk holds it exclusively from its read until its frame is
    /// queued, so stale resync data never overtakes a newer write.
    gate: tokio::sync::RwLock<()>,
    /// Appliers hold it shared while they check a frame's epoch and apply it; raising
    /// the highest epoch at a session's start holds it exclusively, so no frame of an
    /// older epoch is still being applied once a newer primary is followed.
    epoch_gate: tokio::sync::RwLock<()>,
    /// Serialises activity-log updates with their persistence.
    al_io: tokio::sync::Mutex<()>,
    /// Serialises bitmap snapshots with their persistence (no older snapshot lands last).
    bitmap_io: tokio::sync::Mutex<()>,
    /// Bumped on every change writers may wait for (unfrozen, drained).
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    accepted: BTreeMap<String, mpsc::Sender<link::Accepted>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn random_generation() -> u64 {
    loop {
        let g: u64 = rand::random();
        if g != 0 {
            return g;
        }
    }
}

impl PeerState {
    /// A peer not connected yet, with its replication core.
    fn new(spec: PeerSpec, core: PeerCore) -> PeerState {
        PeerState {
            spec,
            core,
            conn: Conn::Connecting,
            admin_down: false,
            peer_disk: None,
            peer_primary: false,
            tx: None,
            session: 0,
            end_session: None,
            end_cause: None,
            waiters: HashMap::new(),
            resync_source: None,
            resync_end_sent: false,
            resync_target: None,
            resync_source_started_ms: 0,
            verify: None,
            verify_status: None,
            kick: Arc::new(Notify::new()),
            replicated_bytes: 0,
            resynced_bytes: 0,
            resyncs_completed: 0,
            compression: Arc::default(),
            protocol: None,
            refused_count: 0,
            epoch_refusal: None,
            awaiting_bitmap: false,
            peer_generation: 0,
            peer_marked_blocks: 0,
            split: resolve::PeerSplit::default(),
        }
    }
}

/// One application write counted in [`Mirror::held_writes`] until dropped.
struct HeldWrite<'a>(&'a Mirror);

impl Drop for HeldWrite<'_> {
    fn drop(&mut self) {
        self.0.lock().held_writes -= 1;
    }
}

impl Mirror {
    /// Opens or creates the backing store and the metadata, starts the listener and the
    /// per-peer connection tasks. Starts as secondary.
    pub async fn open(spec: MirrorSpec, events: EventLog) -> Result<Arc<Mirror>, MirrorError> {
        let (meta, loaded) = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || open_meta(&spec))
                .await
                .map_err(|_| MirrorError::Shutdown)??
        };
        let size = loaded.copy.size_bytes;
        let volume = Volume::open(&spec.backing, false)?;
        let al = ActivityLog::from_extents(AL_EXTENTS, loaded.al_extents.clone());
        let mut peers = BTreeMap::new();
        for p in &spec.peers {
            let mut bitmap = meta.load_bitmap(&p.node, size)?;
            if !loaded.clean {
                al.mark_crash_dirty(&mut bitmap);
            }
            let core = PeerCore::new(p.mode, p.queue_bytes, bitmap, size);
            peers.insert(p.node.clone(), PeerState::new(p.clone(), core));
        }
        let mut gens = loaded.copy.generations.clone();
        if !loaded.clean {
            tracing::warn!(mirror = %spec.name, "no clean shutdown recorded: activity-log extents are marked out of sync for every peer");
            for p in &spec.peers {
                if peers
                    .get(&p.node)
                    .is_some_and(|s| !s.core.bitmap().is_clean())
                {
                    gens.track(&p.node);
                }
            }
        }
        // From now on a crash is unclean; persist the crash-dirty bits first.
        for (name, p) in &peers {
            meta.save_bitmap(name, p.core.bitmap())?;
        }
        meta.save_copy(&CopyMeta {
            size_bytes: size,
            disk: loaded.copy.disk,
            generations: gens.clone(),
            epoch: loaded.copy.epoch,
        })?;
        meta.set_clean(false)?;
        let listener = tokio::net::TcpListener::bind(spec.listen).await?;
        let mut accepted = BTreeMap::new();
        let mut accepted_rx = BTreeMap::new();
        for p in &spec.peers {
            let (tx, rx) = mpsc::channel(4);
            accepted.insert(p.node.clone(), tx);
            accepted_rx.insert(p.node.clone(), rx);
        }
        let state = State::secondary(loaded.copy.disk, gens, loaded.copy.epoch, al, peers);
        let mirror = Arc::new(Mirror {
            spec,
            events,
            volume,
            size,
            meta,
            origin: Instant::now(),
            st: Mutex::new(state),
            gate: tokio::sync::RwLock::new(()),
            epoch_gate: tokio::sync::RwLock::new(()),
            al_io: tokio::sync::Mutex::new(()),
            bitmap_io: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            accepted,
            tasks: Mutex::new(Vec::new()),
        });
        let span = tracing::info_span!("mirror", mirror = %mirror.spec.name, node = %mirror.spec.local_node);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            link::listen(Arc::clone(&mirror), listener).instrument(span.clone()),
        ));
        for (peer, rx) in accepted_rx {
            let pspan = tracing::info_span!(parent: &span, "peer", peer = %peer);
            tasks.push(tokio::spawn(
                link::peer_task(Arc::clone(&mirror), peer, rx).instrument(pspan),
            ));
        }
        tasks.push(tokio::spawn(
            persist_loop(Arc::clone(&mirror)).instrument(span),
        ));
        mirror.lock_tasks().extend(tasks);
        Ok(mirror)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn emit(&self, kind: EventKind, extra: &[(&str, String)]) {
        let mut f = fields([("mirror", self.spec.name.clone())]);
        for (k, v) in extra {
            f.insert((*k).to_string(), v.clone());
        }
        self.events.emit(kind, f);
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn peer_names(&self, peer: Option<&str>) -> Result<Vec<String>, MirrorError> {
        match peer {
            Some(p) => {
                if self.spec.peers.iter().any(|s| s.node == p) {
                    Ok(vec![p.to_string()])
                } else {
                    Err(MirrorError::UnknownPeer(p.to_string()))
                }
            }
            None => Ok(self.spec.peers.iter().map(|s| s.node.clone()).collect()),
        }
    }

    async fn save_copy(&self) -> Result<(), MirrorError> {
        let copy = self.lock().copy_meta(self.size);
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.save_copy(&copy))
            .await
            .map_err(|_| MirrorError::Shutdown)??;
        Ok(())
    }

    /// Persists the bitmaps that changed (resync chunks in flight count as dirty).
    async fn save_bitmaps(&self, all: bool) -> Result<(), MirrorError> {
        let _one = self.bitmap_io.lock().await;
        let snapshots: Vec<(String, DirtyBitmap)> = {
            let mut st = self.lock();
            st.peers
                .iter_mut()
                .filter_map(|(name, p)| {
                    let changed = p.core.take_changed();
                    if !(changed || all) {
                        return None;
                    }
                    let mut bm = p.core.bitmap().clone();
                    if let Some(r) = &p.resync_source {
                        for &(o, l) in r.in_flight() {
                            bm.mark(o, l);
                        }
                    }
                    Some((name.clone(), bm))
                })
                .collect()
        };
        if snapshots.is_empty() {
            return Ok(());
        }
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || {
            for (name, bm) in &snapshots {
                meta.save_bitmap(name, bm)?;
            }
            Ok::<(), MetaError>(())
        })
        .await
        .map_err(|_| MirrorError::Shutdown)??;
        Ok(())
    }

    /// Becomes primary under the group's ownership `epoch`: refused unless this copy is
    /// up to date, no peer is primary and no newer epoch was followed here. Peers that
    /// are not connected get a new generation (their bitmaps start now).
    pub async fn promote(&self, epoch: OwnershipEpoch) -> Result<(), MirrorError> {
        let generation = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(MirrorError::Shutdown);
            }
            if st.primary {
                return Ok(());
            }
            let refusal = promotion_refusal(st.disk)
                .or_else(|| {
                    st.peers
                        .iter()
                        .find(|(_, p)| p.peer_primary && p.conn == Conn::Connected)
                        .map(|(n, _)| format!("peer {n} is primary"))
                })
                .or_else(|| st.epoch.check(epoch).err().map(|e| e.to_string()));
            if let Some(reason) = refusal {
                drop(st);
                self.emit(
                    EventKind::MirrorPromotionRefused,
                    &[("reason", reason.clone())],
                );
                return Err(MirrorError::Refused(reason));
            }
            // The primary this copy followed is gone for good: what it could not prove
            // is marked, and every connected copy reconciles with this one (it sends
            // its bitmap; this copy resyncs the union).
            st.primary_lost();
            st.start_numbering();
            st.peer_acks_sent.clear();
            for p in st.peers.values_mut() {
                p.awaiting_bitmap = p.tx.is_some() && p.conn == Conn::Connected;
            }
            let absent: Vec<String> = st
                .peers
                .iter()
                .filter(|(_, p)| !p.core.is_up())
                .map(|(n, _)| n.clone())
                .collect();
            if st.gens.current == 0 || !absent.is_empty() {
                let refs: Vec<&str> = if st.gens.current == 0 {
                    Vec::new()
                } else {
                    absent.iter().map(String::as_str).collect()
                };
                st.gens.diverge(&refs, random_generation());
            }
            // An absent sync peer whose copy may be promotable is fenced as if it had
            // been lost while primary: writes wait until it is outdated (by the log, with
            // a quorum). Otherwise this primary acknowledged writes that copy lacks while
            // it could still take the group over (found by the lab: n1 dies, n2 takes
            // over and writes, n2 dies, n1 returns and serves).
            if self.spec.fencing {
                let fence: Vec<String> = st
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        !p.core.is_up()
                            && p.spec.mode == ReplicationMode::Sync
                            && p.peer_disk.is_none_or(DiskState::promotable)
                            && !p.core.paused()
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                st.frozen.extend(fence);
            }
            st.primary = true;
            // Checked above: the promotion is at the highest epoch or above.
            let _ = st.epoch.promote(epoch);
            st.gens.current
        };
        if let Err(e) = self.save_copy().await {
            let mut st = self.lock();
            st.primary = false;
            st.epoch.demote();
            return Err(e);
        }
        self.broadcast_state();
        self.emit(
            EventKind::MirrorPromoted,
            &[
                ("generation", format!("{generation:016x}")),
                ("epoch", epoch.to_string()),
            ],
        );
        Ok(())
    }

    /// Drains in-flight writes, flushes locally and on the peers, becomes secondary.
    pub async fn demote(&self) -> Result<(), MirrorError> {
        {
            let mut st = self.lock();
            if !st.primary {
                return Ok(());
            }
            st.primary = false;
            st.suspended = false;
            st.epoch.demote();
        }
        self.bump();
        self.drain_writes().await;
        self.volume.flush().await?;
        let _ = self.flush_peers(true).await;
        {
            let mut st = self.lock();
            st.al = ActivityLog::new(AL_EXTENTS);
        }
        let extents: Vec<u64> = Vec::new();
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.save_al(&extents))
            .await
            .map_err(|_| MirrorError::Shutdown)??;
        self.save_bitmaps(true).await?;
        self.save_copy().await?;
        self.broadcast_state();
        self.emit(EventKind::MirrorDemoted, &[]);
        Ok(())
    }

    async fn drain_writes(&self) {
        let mut rx = self.changed.subscribe();
        loop {
            if self.lock().inflight_writes == 0 {
                return;
            }
            if tokio::time::timeout(Duration::from_millis(100), rx.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return;
            }
        }
    }

    /// Sends a Flush to every replicating peer; with `all`, waits for async peers too.
    /// Returns the peers that did not confirm it (lost meanwhile).
    async fn flush_peers(&self, all: bool) -> Vec<String> {
        let waits = {
            let mut st = self.lock();
            let now = self.now();
            let epoch = st.epoch.stamp();
            let numbered = st.next_seq;
            st.next_seq += 1;
            let mut waits = Vec::new();
            for (name, p) in st.peers.iter_mut() {
                if let Route::Send { seq, wait } = p.core.submit_as(Op::Flush, now, numbered) {
                    if let Some(tx) = &p.tx {
                        let _ = tx.send(Frame::Flush { seq, epoch });
                    }
                    if wait || all {
                        if !wait {
                            // Async peers: wait for the cumulative ack of this seq.
                            p.core.require_wait(seq);
                        }
                        let (otx, orx) = oneshot::channel();
                        p.waiters.insert(seq, otx);
                        waits.push((name.clone(), orx));
                    }
                }
            }
            waits
        };
        let mut unconfirmed = Vec::new();
        for (peer, rx) in waits {
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(PeerOutcome::Acked)) => {}
                _ => unconfirmed.push(peer),
            }
        }
        unconfirmed
    }

    /// A Flush (nobody waits) to every peer with applied but unflushed writes.
    fn barrier_peers(&self) {
        let mut st = self.lock();
        let now = self.now();
        let epoch = st.epoch.stamp();
        let numbered = st.next_seq;
        st.next_seq += 1;
        for p in st.peers.values_mut() {
            if p.core.undurable_ops() == 0 || !p.core.replicating() {
                continue;
            }
            if let Route::Send { seq, wait } = p.core.submit_as(Op::Flush, now, numbered) {
                if let Some(tx) = &p.tx {
                    let _ = tx.send(Frame::Flush { seq, epoch });
                }
                if wait {
                    // Nobody waits for this one: ack it into the void.
                    let (otx, _) = oneshot::channel();
                    p.waiters.insert(seq, otx);
                }
            }
        }
    }

    /// Holds new writes (DRBD's suspend-io) while this node has no lease: they go on
    /// after [`Mirror::resume_io`] at the same epoch and fail with EIO on a demote or
    /// once a newer epoch is seen. Nothing to do on a secondary.
    pub fn suspend_io(&self) {
        let epoch = {
            let mut st = self.lock();
            if !st.primary || st.suspended {
                return;
            }
            st.suspended = true;
            st.epoch.stamp()
        };
        self.emit(
            EventKind::MirrorIoSuspended,
            &[("epoch", epoch.to_string())],
        );
    }

    /// Ends a suspension: the held writes go on if this copy is still primary at
    /// `epoch` and saw no newer one; otherwise it steps down and they fail with EIO.
    /// Returns whether this copy is still primary (without a suspension: whether it is).
    pub async fn resume_io(&self, epoch: OwnershipEpoch) -> Result<bool, MirrorError> {
        let resumed = {
            let mut st = self.lock();
            if !st.suspended {
                return Ok(st.primary);
            }
            let ok = st.epoch.resumes_at(epoch);
            st.suspended = !ok;
            ok
        };
        if !resumed {
            self.demote().await?;
            return Ok(false);
        }
        self.bump();
        self.emit(EventKind::MirrorIoResumed, &[("epoch", epoch.to_string())]);
        Ok(true)
    }

    /// Application bytes written through the export since the daemon started.
    pub fn written_bytes(&self) -> u64 {
        self.lock().written_bytes
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// Why this primary no longer acknowledges writes: a copy it reached has followed a
    /// newer ownership epoch (a newer owner exists). `None` while it is not deposed.
    pub fn deposed(&self) -> Option<StaleEpoch> {
        self.lock().epoch.deposed()
    }

    /// The highest ownership epoch this copy has followed or been promoted at.
    pub fn highest_epoch(&self) -> OwnershipEpoch {
        self.lock().epoch.highest()
    }

    /// Whether this copy is UpToDate, and its current generation.
    pub fn disk_and_generation(&self) -> (bool, u64) {
        let st = self.lock();
        (st.disk == DiskState::UpToDate, st.gens.current)
    }

    /// On a primary: the sync peers it has in sync now (connected, their copy
    /// UpToDate, no resync or changed blocks pending, not held for outdating): they hold
    /// every write this primary completes. Only the primary says so, from its side of
    /// the link: a secondary whose link is half broken may still believe it follows.
    pub fn in_sync_peers(&self) -> Vec<String> {
        let st = self.lock();
        if !st.primary {
            return Vec::new();
        }
        st.peers
            .iter()
            .filter(|(n, p)| {
                p.spec.mode == ReplicationMode::Sync
                    && p.conn == Conn::Connected
                    && p.core.is_up()
                    && !p.core.paused()
                    && p.peer_disk == Some(DiskState::UpToDate)
                    && p.resync_source.is_none()
                    && !p.resync_end_sent
                    && p.core.out_of_sync_bytes() == 0
                    && !st.frozen.contains(*n)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// On a primary, how far behind each peer's copy is: (peer, bytes it may lack,
    /// age in ms of the oldest write it has not acknowledged). The bytes count what is
    /// unacknowledged and what its bitmap holds out of sync, so they bound what the copy
    /// lacks from above (to the bitmap's granularity). Empty on a secondary.
    pub fn peer_lags(&self) -> Vec<(String, u64, u32)> {
        let now = self.now();
        let st = self.lock();
        if !st.primary {
            return Vec::new();
        }
        st.peers
            .iter()
            .map(|(name, p)| {
                let bytes = p.core.lag_bytes() + p.core.out_of_sync_bytes();
                let age = u32::try_from(p.core.lag(now).as_millis()).unwrap_or(u32::MAX);
                (name.clone(), bytes, age)
            })
            .collect()
    }

    /// The status snapshot.
    pub fn status(&self) -> MirrorStatus {
        let now = self.now();
        let st = self.lock();
        let peers = st
            .peers
            .iter()
            .map(|(name, p)| {
                let connection = match p.conn {
                    Conn::Connected if p.core.paused() => LinkState::Paused,
                    Conn::Connected => LinkState::Connected,
                    Conn::Connecting => LinkState::Connecting,
                    Conn::Disconnected => LinkState::Disconnected,
                    Conn::SplitBrain => LinkState::SplitBrain,
                    Conn::Refused => LinkState::Refused,
                };
                let resync = if let Some(r) = &p.resync_source {
                    Some(ResyncStatus {
                        direction: ResyncDirection::Source,
                        full: r.full,
                        total_bytes: r.total_bytes,
                        done_bytes: r.done_bytes,
                        bytes_per_second: r.bytes_per_second(now),
                        eta_seconds: r.eta_seconds(now),
                        started_ms: p.resync_source_started_ms,
                    })
                } else {
                    p.resync_target.as_ref().map(|t| {
                        let secs = t.started.elapsed().as_secs_f64();
                        let rate = if secs > 0.0 {
                            t.done_bytes as f64 / secs
                        } else {
                            0.0
                        };
                        ResyncStatus {
                            direction: ResyncDirection::Target,
                            full: t.full,
                            total_bytes: t.total_bytes,
                            done_bytes: t.done_bytes,
                            bytes_per_second: rate,
                            eta_seconds: (rate > 0.0)
                                .then(|| t.total_bytes.saturating_sub(t.done_bytes) as f64 / rate),
                            started_ms: t.started_ms,
                        }
                    })
                };
                let mut out_of_sync = p.core.out_of_sync_bytes();
                if let Some(r) = &p.resync_source {
                    out_of_sync += r.in_flight().map(|&(_, l)| l).sum::<u64>();
                }
                MirrorPeerStatus {
                    node: name.clone(),
                    mode: p.spec.mode,
                    connection,
                    peer_disk: shown_peer_disk(p),
                    out_of_sync_bytes: out_of_sync,
                    lag_bytes: p.core.lag_bytes(),
                    lag_seconds: p.core.lag(now).as_secs_f64(),
                    lag_budget_seconds: p.spec.lag_budget.map(|d| d.as_secs_f64()),
                    rate_limit_bytes_per_second: p.spec.rate_limit,
                    resync,
                    verify: p.verify_status.clone(),
                    replicated_bytes: p.replicated_bytes,
                    resynced_bytes: p.resynced_bytes,
                    resyncs_completed: p.resyncs_completed,
                    compression: CompressionStatus::from_counts(p.compression.get()),
                    protocol: p.protocol,
                }
            })
            .collect();
        MirrorStatus {
            name: self.spec.name.clone(),
            group: None,
            resource: None,
            role: if st.primary {
                MirrorRole::Primary
            } else {
                MirrorRole::Secondary
            },
            disk: st.shown_disk(),
            size_bytes: self.size,
            generation: format!("{:016x}", st.gens.current),
            io_frozen: !st.frozen.is_empty(),
            read_bytes: st.read_bytes,
            written_bytes: st.written_bytes,
            peers,
            recovery_point: None,
        }
    }

    /// Stops replicating to `peer` (None: all); its writes go to its bitmap.
    pub async fn pause(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        self.pause_for(peer, "admin").await
    }

    /// Pauses replication to `peer` (None: all), saying why (`admin`, `schedule`).
    async fn pause_for(&self, peer: Option<&str>, why: &str) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            {
                let mut st = self.lock();
                let p = st.peer(&name)?;
                if p.core.paused() {
                    continue;
                }
                p.core.set_paused(true);
            }
            self.emit(
                EventKind::MirrorPaused,
                &[("peer", name), ("reason", why.to_string())],
            );
        }
        Ok(())
    }

    /// Resumes replication; the peer catches up from its bitmap.
    pub async fn resume(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        self.resume_for(peer, "admin").await
    }

    /// Resumes replication to `peer` (None: all), saying why (`admin`, `schedule`).
    async fn resume_for(&self, peer: Option<&str>, why: &str) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            {
                let mut st = self.lock();
                let p = st.peer(&name)?;
                if !p.core.paused() {
                    continue;
                }
                p.core.set_paused(false);
                self.maybe_start_resync(&mut st, &name, false);
            }
            self.emit(
                EventKind::MirrorResumed,
                &[("peer", name), ("reason", why.to_string())],
            );
        }
        Ok(())
    }

    /// Closes the link to `peer` (None: all) and keeps it down until `connect`.
    pub async fn disconnect(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            let mut st = self.lock();
            let p = st.peer(&name)?;
            p.admin_down = true;
            if let Some(end) = &p.end_session {
                end.notify_one();
            }
            if p.conn != Conn::Connected {
                p.conn = Conn::Disconnected;
            }
            p.kick.notify_one();
        }
        // Wait (briefly) until the sessions are gone.
        for _ in 0..100 {
            let down = {
                let st = self.lock();
                self.peer_names(peer)?
                    .iter()
                    .all(|n| st.peers.get(n).is_some_and(|p| p.tx.is_none()))
            };
            if down {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Lets the link to `peer` (None: all) come up again (also after a split brain or a
    /// refusal).
    pub async fn connect(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            let mut st = self.lock();
            let p = st.peer(&name)?;
            p.admin_down = false;
            if matches!(p.conn, Conn::Disconnected | Conn::SplitBrain) {
                p.conn = Conn::Connecting;
            }
            p.kick.notify_one();
        }
        Ok(())
    }

    /// Starts an online verify against `peer` (None: all connected peers).
    pub async fn verify(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            let mut st = self.lock();
            let size = self.size;
            let p = st.peer(&name)?;
            if p.tx.is_none() || p.conn != Conn::Connected {
                if peer.is_some() {
                    return Err(MirrorError::Refused(format!(
                        "peer {name} is not connected"
                    )));
                }
                continue;
            }
            p.verify = Some(VerifyRun::new(size));
            p.verify_status = Some(VerifyStatus {
                running: true,
                checked_bytes: 0,
                total_bytes: size,
                out_of_sync_bytes: 0,
                started_ms: unix_ms(),
                finished_ms: None,
            });
            p.kick.notify_one();
        }
        Ok(())
    }

    /// Marks every block for `peer` (None: all) and resyncs them (holes go as zero
    /// ranges).
    pub async fn resync_full(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        for name in self.peer_names(peer)? {
            let mut st = self.lock();
            st.peer(&name)?.core.bitmap_mut().mark_all();
            st.gens.track(&name);
            self.maybe_start_resync(&mut st, &name, true);
        }
        self.save_bitmaps(false).await?;
        self.save_copy().await
    }

    /// Sync peers this primary lost and holds writes for: (peer, current generation).
    pub fn pending_outdates(&self) -> Vec<(String, u64)> {
        let st = self.lock();
        st.frozen
            .iter()
            .map(|p| (p.clone(), st.gens.current))
            .collect()
    }

    /// The runtime confirmed `peer` is Outdated or dead: held writes go on, tracked in
    /// its bitmap.
    pub fn peer_outdated(&self, peer: &str) {
        let was = self.lock().frozen.remove(peer);
        self.bump();
        if was {
            self.emit(EventKind::MirrorPeerOutdated, &[("peer", peer.to_string())]);
        }
    }

    /// On a secondary: the primary went on without this copy (at `generation`); mark it
    /// Outdated durably.
    pub async fn outdate(&self, generation: u64) -> Result<(), MirrorError> {
        {
            let mut st = self.lock();
            if st.primary {
                return Err(MirrorError::Refused("a primary cannot be outdated".into()));
            }
            if st.gens.current == generation {
                // Already holds that generation's data: nothing is missing.
                return Ok(());
            }
            let follows = st.disk == DiskState::UpToDate
                && st.peers.values().any(|p| {
                    p.peer_primary
                        && p.conn == Conn::Connected
                        && p.core.is_up()
                        && p.resync_target.is_none()
                });
            if follows {
                // In sync with a live primary again (resynced since the outdating): it
                // holds every write; the primary clears the log's mark.
                return Ok(());
            }
            if matches!(st.disk, DiskState::UpToDate | DiskState::SyncSource) {
                st.disk = DiskState::Outdated;
            }
        }
        self.save_copy().await
    }

    /// Clean shutdown: drain, flush, close the links, persist bitmaps and the activity
    /// log, and record the clean shutdown.
    pub async fn shutdown(&self) {
        let was_primary = {
            let mut st = self.lock();
            if st.shutting_down {
                return;
            }
            st.shutting_down = true;
            let was = st.primary;
            st.primary = false;
            st.epoch.demote();
            // A secondary leaving a running primary knows it will fall behind.
            if !was
                && st
                    .peers
                    .values()
                    .any(|p| p.peer_primary && p.conn == Conn::Connected)
                && st.disk == DiskState::UpToDate
            {
                st.disk = DiskState::Outdated;
            }
            was
        };
        self.bump();
        if was_primary {
            self.drain_writes().await;
            let _ = self.volume.flush().await;
            let _ = self.flush_peers(true).await;
        } else {
            let _ = self.volume.flush().await;
        }
        {
            let st = self.lock();
            for p in st.peers.values() {
                if let Some(end) = &p.end_session {
                    end.notify_one();
                }
            }
        }
        for _ in 0..50 {
            if self.lock().peers.values().all(|p| p.tx.is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = self.lock_tasks().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        let extents = self.lock().al.extents().to_vec();
        let meta = self.meta.clone();
        let al = tokio::task::spawn_blocking(move || meta.save_al(&extents)).await;
        let result = async {
            al.map_err(|_| MirrorError::Shutdown)??;
            self.save_bitmaps(true).await?;
            self.save_copy().await?;
            let meta = self.meta.clone();
            tokio::task::spawn_blocking(move || meta.set_clean(true))
                .await
                .map_err(|_| MirrorError::Shutdown)??;
            Ok::<(), MirrorError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(mirror = %self.spec.name, error = %e, "unclean shutdown: metadata not saved");
        }
    }

    /// Sends this copy's State to every connected peer.
    fn broadcast_state(&self) {
        let st = self.lock();
        for (name, p) in &st.peers {
            if let Some(tx) = &p.tx {
                let _ = tx.send(Frame::State(self.copy_state(&st, name)));
            }
        }
    }

    fn copy_state(&self, st: &State, peer: &str) -> CopyState {
        let changed = st
            .peers
            .get(peer)
            .map(|p| p.core.bitmap().dirty_blocks())
            .unwrap_or(0);
        let own = CopyState {
            node: self.spec.local_node.clone(),
            mirror: self.spec.name.clone(),
            size_bytes: self.size,
            generations: st.gens.clone(),
            disk: match st.disk {
                DiskState::SyncSource => DiskState::UpToDate,
                d => d,
            },
            primary: st.primary,
            changed_blocks: changed,
            epoch: st.epoch.stamp(),
            resolving: false,
        };
        // A pending split-brain resolution changes what the peer is shown.
        connect::advertised(own, peer, self.meta.resolution(peer))
    }

    /// Starts a resync to `peer` as source if the link is up and it lacks blocks.
    fn maybe_start_resync(&self, st: &mut State, peer: &str, full: bool) {
        self.start_resync(st, peer, full, false);
    }

    /// Starts a resync of the union of both sides' bitmaps to `peer`, even an empty
    /// one (its end hands the peer this copy's generation).
    fn start_resync_now(&self, st: &mut State, peer: &str) {
        self.start_resync(st, peer, false, true);
    }

    fn start_resync(&self, st: &mut State, peer: &str, full: bool, force: bool) {
        let now = self.now();
        if !st.may_resync_to(peer) {
            return;
        }
        let Some(p) = st.peers.get_mut(peer) else {
            return;
        };
        if p.resync_source.is_some()
            || p.awaiting_bitmap
            || p.conn != Conn::Connected
            || !p.core.replicating()
            // Nothing to send, unless the peer waits for a resync to end (it became
            // a sync target but this side has no block for it): an empty resync then
            // hands it the generation and makes it UpToDate.
            || (!force
                && p.core.bitmap().is_clean()
                && p.peer_disk.is_none_or(|d| d.promotable()))
            || p.tx.is_none()
        {
            return;
        }
        // ResyncBegin (and the event) go out from the session's driver
        // (`begin_resync`).
        let r = ResyncSource::new(full, p.core.bitmap(), self.size, p.spec.rate_limit, now);
        p.resync_source = Some(r);
        p.resync_end_sent = false;
        p.resync_source_started_ms = unix_ms();
        p.kick.notify_one();
    }

    /// Waits until writes may go (not frozen, not suspended), or fails if this copy is
    /// not primary. A held write (for a lost peer's outdating, or suspended when the
    /// node lost its lease) fails with EIO if the copy steps down meanwhile or learns
    /// of a newer owner: it was never acknowledged, and the new owner's copy may not
    /// have it. Writes already in flight when I/O is suspended finish.
    async fn admit_write(&self) -> Result<(), ExportError> {
        let mut rx = self.changed.subscribe();
        // Counted in `held_writes` while it waits; the guard uncounts it however the
        // wait ends, a dropped (cancelled) request included.
        let mut held: Option<HeldWrite<'_>> = None;
        loop {
            {
                let mut st = self.lock();
                let gate = WriteGate {
                    primary: st.primary,
                    shutting_down: st.shutting_down,
                    deposed: st.epoch.deposed(),
                    fenced: !st.frozen.is_empty(),
                    suspended: st.suspended,
                };
                match admission(&gate, held.is_some()) {
                    Admission::Go => {
                        st.inflight_writes += 1;
                        return Ok(());
                    }
                    Admission::Hold if held.is_none() => {
                        st.held_writes += 1;
                        held = Some(HeldWrite(self));
                    }
                    Admission::Hold => {}
                    Admission::Deposed(stale) => {
                        return Err(ExportError::Io(std::io::Error::other(format!(
                            "this primary was deposed: {stale}"
                        ))))
                    }
                    Admission::SteppedDown => {
                        return Err(ExportError::Io(std::io::Error::other(
                            "the write was held and this copy stepped down",
                        )))
                    }
                    Admission::ReadOnly => return Err(ExportError::ReadOnly),
                    Admission::Shutdown => return Err(ExportError::Shutdown),
                }
            }
            if rx.changed().await.is_err() {
                return Err(ExportError::Shutdown);
            }
        }
    }

    /// Application writes waiting in admission now (for a lost peer's outdating, or
    /// suspended I/O).
    pub fn held_writes(&self) -> u64 {
        self.lock().held_writes
    }

    fn finish_write(&self) {
        self.lock().inflight_writes -= 1;
        self.bump();
    }

    /// Records the activity-log extents of a write, persisting the log (and any changed
    /// bitmap) first if an extent turns hot.
    async fn activity(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        let _g = self.al_io.lock().await;
        let (extents, evicted) = {
            let mut st = self.lock();
            let before = st.al.extents().to_vec();
            match st.al.begin_write(offset, len) {
                ActivityChange::None => return Ok(()),
                ActivityChange::Persist => {
                    let after = st.al.extents().to_vec();
                    let evicted: Vec<u64> =
                        before.into_iter().filter(|e| !after.contains(e)).collect();
                    (after, evicted)
                }
            }
        };
        if !evicted.is_empty() {
            // An extent leaves the log: after a crash nothing would mark it again, so
            // everything written to it must be durable here and on the sync peers
            // first. A peer that does not confirm gets the extent marked instead.
            self.volume.flush().await?;
            let unconfirmed = self.flush_peers(false).await;
            let mut st = self.lock();
            for peer in unconfirmed {
                if let Some(p) = st.peers.get_mut(&peer) {
                    for &e in &evicted {
                        p.core.mark_range(e * EXTENT_BYTES, EXTENT_BYTES);
                    }
                }
            }
            // Async peers are not waited for: what is still in flight to them there
            // is marked (persisted with the bitmaps below, before the log forgets it).
            for p in st.peers.values_mut() {
                for &e in &evicted {
                    p.core.mark_in_flight(e * EXTENT_BYTES, EXTENT_BYTES);
                }
            }
        }
        self.save_bitmaps(false).await.map_err(io_error)?;
        self.save_al(extents).await
    }

    /// Persists the activity log's extents.
    async fn save_al(&self, extents: Vec<u64>) -> Result<(), ExportError> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.save_al(&extents))
            .await
            .map_err(|_| ExportError::Shutdown)?
            .map_err(io_error)
    }

    /// The replicated write path shared by write, trim, write-zeroes and flush.
    async fn replicate<F>(&self, op: Op, data: Option<&[u8]>, local: F) -> Result<(), ExportError>
    where
        F: std::future::Future<Output = Result<(), ExportError>>,
    {
        self.admit_write().await?;
        let result = self.replicate_admitted(op, data, local).await;
        self.finish_write();
        result
    }

    async fn replicate_admitted<F>(
        &self,
        op: Op,
        data: Option<&[u8]>,
        local: F,
    ) -> Result<(), ExportError>
    where
        F: std::future::Future<Output = Result<(), ExportError>>,
    {
        let range = match op {
            Op::Write { offset, len, .. }
            | Op::Trim { offset, len }
            | Op::Zeroes { offset, len } => Some((offset, len)),
            Op::Flush => None,
        };
        if let Some((offset, len)) = range {
            self.activity(offset, len).await?;
        }
        // A write larger than a frame's payload goes out as several frames.
        let pieces: Vec<(Op, usize)> = match op {
            Op::Write { offset, len, fua } if len > MAX_DATA as u64 => (0..len)
                .step_by(MAX_DATA)
                .map(|start| {
                    let piece = (len - start).min(MAX_DATA as u64);
                    (
                        Op::Write {
                            offset: offset + start,
                            len: piece,
                            fua,
                        },
                        start as usize,
                    )
                })
                .collect(),
            _ => vec![(op, 0)],
        };
        let gate = self.gate.read().await;
        let waits = {
            let mut st = self.lock();
            let now = self.now();
            let epoch = st.epoch.stamp();
            let first_seq = st.next_seq;
            st.next_seq += pieces.len() as u64;
            let mut waits = Vec::new();
            for (name, p) in st.peers.iter_mut() {
                for (i, &(op, start)) in pieces.iter().enumerate() {
                    let numbered = first_seq + i as u64;
                    let Route::Send { seq, wait } = p.core.submit_as(op, now, numbered) else {
                        continue;
                    };
                    if let Op::Write { len, .. } = op {
                        p.replicated_bytes += len;
                    }
                    let frame = op_frame(op, seq, epoch, data, start);
                    if let Some(tx) = &p.tx {
                        // A closed queue: the session is ending and will mark this op.
                        let _ = tx.send(frame);
                    }
                    if wait {
                        let (otx, orx) = oneshot::channel();
                        p.waiters.insert(seq, otx);
                        waits.push((name.clone(), orx));
                    }
                }
            }
            waits
        };
        let local_result = local.await;
        drop(gate);
        local_result?;
        for (peer, rx) in waits {
            let outcome = rx.await.unwrap_or(PeerOutcome::Lost);
            if outcome == PeerOutcome::Lost {
                self.wait_unfrozen(&peer).await?;
            }
        }
        if let Op::Write { len, .. } = op {
            self.lock().written_bytes += len;
        }
        Ok(())
    }

    /// A write the peer did not confirm: hold it while the peer is frozen (fencing).
    async fn wait_unfrozen(&self, peer: &str) -> Result<(), ExportError> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self.lock();
                if let Some(stale) = st.epoch.deposed().filter(|_| st.primary) {
                    return Err(ExportError::Io(std::io::Error::other(format!(
                        "this primary was deposed: {stale}"
                    ))));
                }
                if !st.frozen.contains(peer) {
                    return Ok(());
                }
                if st.shutting_down {
                    return Err(ExportError::Shutdown);
                }
                if !st.primary {
                    // Stepped down (lease lost) before the peer was outdated: this
                    // write is not acknowledged.
                    return Err(ExportError::Io(std::io::Error::other(
                        "the write waited for a lost peer's outdating and this copy stepped down",
                    )));
                }
            }
            if rx.changed().await.is_err() {
                return Err(ExportError::Shutdown);
            }
        }
    }

    fn check_readable(&self) -> Result<(), ExportError> {
        let st = self.lock();
        if st.primary {
            Ok(())
        } else {
            Err(ExportError::Shutdown)
        }
    }
}

/// Creates a missing backing file sparse with `size`; checks an existing one is big
/// enough. Returns its size.
/// Opens (creating) the metadata where the spec puts it, preparing the backing.
fn open_meta(spec: &MirrorSpec) -> Result<(MetaStore, Loaded), MirrorError> {
    match spec.metadata {
        MetaPlacement::External => {
            let size = prepare_backing(&spec.backing, spec.size)?;
            meta::internal::refuse_if_internal(&spec.meta_dir, &spec.backing, &spec.name)?;
            Ok(MetaStore::open(&spec.meta_dir, spec.size.unwrap_or(size))?)
        }
        MetaPlacement::Internal { peer_slots } => {
            if let (Some(size), false) = (spec.size, spec.backing.exists()) {
                let total = size + meta::layout::area_bytes(size, peer_slots);
                prepare_backing(&spec.backing, Some(total))?;
            }
            Ok(MetaStore::open_internal(
                &spec.meta_dir,
                &spec.backing,
                &spec.name,
                peer_slots,
                spec.size,
            )?)
        }
    }
}

fn prepare_backing(path: &Path, size: Option<u64>) -> Result<u64, MirrorError> {
    match std::fs::metadata(path) {
        Ok(m) => {
            if m.is_file() {
                if let Some(want) = size {
                    if m.len() < want {
                        return Err(MirrorError::Size {
                            wanted: want,
                            actual: m.len(),
                        });
                    }
                }
                Ok(m.len())
            } else {
                Ok(size.unwrap_or(0))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(want) = size else {
                return Err(MirrorError::Io(e));
            };
            let f = std::fs::File::create(path)?;
            f.set_len(want)?;
            f.sync_all()?;
            Ok(want)
        }
        Err(e) => Err(MirrorError::Io(e)),
    }
}

/// The frame replicating `op` (a write's payload from `data` at `start`).
fn op_frame(op: Op, seq: u64, epoch: OwnershipEpoch, data: Option<&[u8]>, start: usize) -> Frame {
    match op {
        Op::Write { offset, fua, len } => Frame::Write {
            seq,
            epoch,
            offset,
            fua,
            data: data
                .map(|d| d[start..start + len as usize].to_vec())
                .unwrap_or_default(),
        },
        Op::Trim { offset, len } => Frame::Trim {
            seq,
            epoch,
            offset,
            len: len as u32,
        },
        Op::Zeroes { offset, len } => Frame::Zeroes {
            seq,
            epoch,
            offset,
            len: len as u32,
        },
        Op::Flush => Frame::Flush { seq, epoch },
    }
}

/// Persists changed bitmaps at least every [`BITMAP_PERSIST_INTERVAL`].
/// Also sends a Flush to peers holding applied-but-unflushed writes (an epoch barrier
/// that bounds what a drop marks).
async fn persist_loop(m: Arc<Mirror>) {
    let mut tick = tokio::time::interval(BITMAP_PERSIST_INTERVAL);
    let mut last_barrier = Instant::now();
    loop {
        tick.tick().await;
        if last_barrier.elapsed() >= BARRIER_INTERVAL {
            m.barrier_peers();
            last_barrier = Instant::now();
        }
        if let Err(e) = m.save_bitmaps(false).await {
            tracing::error!(error = %e, "cannot persist the dirty bitmaps");
        }
        if let Err(e) = m.shrink_secondary_al().await {
            tracing::error!(error = %e, "cannot persist the activity log");
        }
        m.follow_schedules(crate::event::unix_ms()).await;
    }
}

/// The peer's disk state as this copy can vouch for it: what the peer reported while
/// connected, unless this copy knows it lacks blocks (then `Outdated`: it has missed
/// writes); `None` (unknown, DRBD's `DUnknown`) while disconnected with nothing marked.
fn shown_peer_disk(p: &PeerState) -> Option<DiskState> {
    let missed = !p.core.bitmap().is_clean();
    let connected = p.conn == Conn::Connected && p.tx.is_some();
    match p.peer_disk {
        Some(DiskState::UpToDate | DiskState::SyncSource) if missed && connected => {
            Some(DiskState::Outdated)
        }
        d if connected => d,
        _ if missed => Some(DiskState::Outdated),
        _ => None,
    }
}

fn io_error(e: impl std::fmt::Display) -> ExportError {
    ExportError::Io(std::io::Error::other(e.to_string()))
}

impl Export for Mirror {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        !self.is_primary()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, ExportError> {
        self.check_readable()?;
        let data = self.volume.read(offset, len).await?;
        self.lock().read_bytes += u64::from(len);
        Ok(data)
    }

    async fn write(
        &self,
        offset: u64,
        data: impl AsRef<[u8]> + Send + 'static,
        fua: bool,
    ) -> Result<(), ExportError> {
        let len = data.as_ref().len() as u64;
        let copy = data.as_ref().to_vec();
        self.replicate(
            Op::Write { offset, len, fua },
            Some(&copy),
            self.volume.write(offset, data, fua),
        )
        .await
    }

    async fn flush(&self) -> Result<(), ExportError> {
        self.replicate(Op::Flush, None, self.volume.flush()).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), ExportError> {
        self.replicate(
            Op::Trim {
                offset,
                len: u64::from(len),
            },
            None,
            self.volume.trim(offset, len),
        )
        .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), ExportError> {
        self.replicate(
            Op::Zeroes {
                offset,
                len: u64::from(len),
            },
            None,
            self.volume.write_zeroes(offset, len, may_trim, fua),
        )
        .await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        self.check_readable()?;
        self.volume.block_status(offset, len).await
    }
}

impl Mirror {
    /// Both States are in: plan the connection ([`connect::plan`]), apply the plan and
    /// register the session. Returns the session number, or why the copies stay apart.
    pub(crate) fn on_first_state(
        &self,
        peer: &str,
        theirs: &CopyState,
        tx: mpsc::UnboundedSender<Frame>,
        end: Arc<Notify>,
    ) -> Result<u64, MirrorError> {
        let mut st = self.lock();
        let mine = self.copy_state(&st, peer);
        let plan = connect::plan(&mine, theirs, self.spec.split_brain)?;
        st.disk = plan.local_disk;
        let p = st.peer(peer)?;
        p.session += 1;
        let session = p.session;
        p.tx = Some(tx);
        p.end_session = Some(end);
        p.end_cause = None;
        p.conn = Conn::Connected;
        p.peer_disk = Some(plan.peer_disk);
        p.peer_primary = theirs.primary;
        p.peer_generation = theirs.generations.current;
        if theirs.primary {
            st.follow(peer);
        }
        let Some(p) = st.peers.get_mut(peer) else {
            return Err(MirrorError::UnknownPeer(peer.to_string()));
        };
        p.core.link_up();
        let send = match plan.resync {
            Resync::Send(blocks) => Some(blocks),
            Resync::None | Resync::Receive => None,
        };
        if send == Some(Blocks::All) {
            p.core.bitmap_mut().mark_all();
        }
        // The union: the peer's bitmap comes first.
        p.awaiting_bitmap = send == Some(Blocks::Union);
        if send.is_some() {
            st.gens.track(peer);
        }
        if plan.send_bitmap {
            self.send_bitmap(&st, peer);
        }
        tracing::info!(?plan, "connected");
        drop(st);
        self.emit(EventKind::MirrorConnected, &[("peer", peer.to_string())]);
        if let Some(blocks) = send {
            self.maybe_start_resync(&mut self.lock(), peer, blocks == Blocks::All);
        }
        Ok(session)
    }

    /// The epoch rule on the peer's first `State` of a session (see
    /// [`core::EpochGuard`]), before the connect plan: waits until no frame of an older
    /// epoch is being applied, and persists a raised epoch before anything of the peer
    /// is applied. `Err`: the link is dropped for this reason.
    pub(crate) async fn admit_epoch(
        &self,
        peer: &str,
        theirs: &CopyState,
    ) -> Result<(), MirrorError> {
        let _exclusive = self.epoch_gate.write().await;
        let verdict = self
            .lock()
            .epoch
            .on_peer_state(theirs.epoch, theirs.primary);
        if matches!(
            verdict,
            EpochVerdict::Accept { raised: true } | EpochVerdict::Deposed(_)
        ) {
            self.save_copy().await?;
        }
        self.on_epoch_verdict(peer, verdict)
    }

    /// The epoch rule on a `State` within a session (the peer was promoted or followed
    /// a newer primary meanwhile). A raise needs every applier idle: if one is busy,
    /// the session ends and the next one raises at its start ([`Mirror::admit_epoch`]).
    fn recheck_epoch(&self, peer: &str, theirs: &CopyState) -> Result<(), MirrorError> {
        let mut st = self.lock();
        let mut guard = st.epoch;
        let verdict = guard.on_peer_state(theirs.epoch, theirs.primary);
        if let EpochVerdict::Accept { raised: false } | EpochVerdict::RefusePeer(_) = verdict {
            drop(st);
            return self.on_epoch_verdict(peer, verdict);
        }
        let Ok(_exclusive) = self.epoch_gate.try_write() else {
            return Err(MirrorError::Refused(
                "the ownership epoch rose while a frame was being applied; reconnecting".into(),
            ));
        };
        st.epoch = guard;
        let copy = st.copy_meta(self.size);
        drop(st);
        self.meta.save_copy(&copy)?;
        self.on_epoch_verdict(peer, verdict)
    }

    /// Reports a refused or deposing epoch (once per distinct refusal on a link).
    fn on_epoch_verdict(&self, peer: &str, verdict: EpochVerdict) -> Result<(), MirrorError> {
        let (stale, deposed) = match verdict {
            EpochVerdict::Accept { .. } => {
                if let Some(p) = self.lock().peers.get_mut(peer) {
                    p.epoch_refusal = None;
                }
                return Ok(());
            }
            EpochVerdict::RefusePeer(stale) => (stale, false),
            EpochVerdict::Deposed(stale) => (stale, true),
        };
        let first = {
            let mut st = self.lock();
            st.peers.get_mut(peer).is_some_and(|p| {
                if p.conn != Conn::Connected {
                    p.conn = Conn::Refused;
                }
                p.epoch_refusal.replace(stale) != Some(stale)
            })
        };
        if deposed {
            // Held and new writes fail from now on.
            self.bump();
        }
        if first {
            let role = if deposed {
                "this primary was deposed"
            } else {
                "refusing a primary"
            };
            tracing::warn!(%stale, deposed, "{role}: stale ownership epoch");
            self.emit(
                EventKind::MirrorDisconnected,
                &[
                    ("peer", peer.to_string()),
                    ("reason", LinkDownCause::StaleEpoch.name().to_string()),
                    ("detail", stale.to_string()),
                ],
            );
        }
        Err(MirrorError::StaleEpoch(stale))
    }

    /// A split brain or refusal: show it and raise the event.
    pub(crate) fn on_stay_apart(&self, peer: &str, why: &MirrorError) {
        let split_brain = resolve::is_split_brain(why);
        let reason = why.to_string();
        // A split brain is retried; the same reason again is not news.
        let news = self
            .lock()
            .peers
            .get_mut(peer)
            .is_some_and(|p| p.split.report(&reason));
        {
            let mut st = self.lock();
            if let Some(p) = st.peers.get_mut(peer) {
                p.conn = if split_brain {
                    Conn::SplitBrain
                } else {
                    Conn::Disconnected
                };
                p.admin_down = true;
            }
        }
        if !news {
            return;
        }
        tracing::warn!(%reason, "staying disconnected");
        if split_brain {
            self.emit(
                EventKind::MirrorSplitBrain,
                &[("peer", peer.to_string()), ("reason", reason)],
            );
        }
    }

    pub(crate) fn on_auth_failed(&self, peer: &str) {
        let mut st = self.lock();
        if let Some(p) = st.peers.get_mut(peer) {
            p.refused_count += 1;
            if p.conn != Conn::Connected {
                p.conn = Conn::Refused;
            }
        }
    }

    /// What the listener offers a caller from `ip` before it knows which peer called
    /// ([`connect::accepted_compression`](crate::mirror::connect::accepted_compression)).
    pub(crate) fn compress_for(&self, ip: std::net::IpAddr) -> Compress {
        crate::mirror::connect::accepted_compression(
            self.spec.peers.iter().map(|p| (p.address.ip(), p.compress)),
            ip,
        )
    }

    /// Records the protocol version a new link to `peer` negotiated, for the status.
    pub(crate) fn note_protocol(&self, peer: &str, version: u16) {
        if let Some(p) = self.lock().peers.get_mut(peer) {
            p.protocol = Some(version);
        }
    }

    /// The counters of what this node's link writers compress for `peer`.
    pub(crate) fn compression_counters(&self, peer: &str) -> Option<Arc<CompressCounters>> {
        self.lock()
            .peers
            .get(peer)
            .map(|p| Arc::clone(&p.compression))
    }

    /// Peers at this IP address that dial us and are not connected (an accepted
    /// connection that failed authentication is blamed on them).
    pub(crate) fn peers_at(&self, ip: std::net::IpAddr) -> Vec<String> {
        self.spec
            .peers
            .iter()
            .filter(|p| p.address.ip() == ip && p.node < self.spec.local_node)
            .map(|p| p.node.clone())
            .collect()
    }

    pub(crate) fn on_ack(&self, peer: &str, session: u64, seq: u64) -> Result<(), String> {
        let mut st = self.lock();
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return Ok(());
        };
        let done = p.core.ack(seq).map_err(|e| e.to_string())?;
        for s in done {
            if let Some(w) = p.waiters.remove(&s) {
                let _ = w.send(PeerOutcome::Acked);
            }
        }
        self.send_peer_acks(&mut st);
        let Some(p) = st.peers.get_mut(peer) else {
            return Ok(());
        };
        // An async peer caught up with its queue: send what overflowed to the bitmap.
        if p.core.unacked_ops() == 0
            && p.resync_source.is_none()
            && !p.core.bitmap().is_clean()
            && st.primary
        {
            st.gens.track(peer);
            self.maybe_start_resync(&mut st, peer, false);
        }
        Ok(())
    }

    pub(crate) fn on_state_update(
        &self,
        peer: &str,
        session: u64,
        theirs: &CopyState,
    ) -> Result<(), String> {
        let live = self
            .lock()
            .peers
            .get(peer)
            .is_some_and(|p| p.session == session);
        if live {
            self.recheck_epoch(peer, theirs)
                .map_err(|e| e.to_string())?;
        }
        let mut adopt = false;
        let mut completed = None;
        {
            let mut st = self.lock();
            let primary = st.primary;
            let my_current = st.gens.current;
            let disk = st.disk;
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return Ok(());
            };
            p.peer_disk = Some(theirs.disk);
            p.peer_generation = theirs.generations.current;
            let was_primary = std::mem::replace(&mut p.peer_primary, theirs.primary);
            if primary && theirs.primary {
                return Err("split brain: the peer became primary too".into());
            }
            if was_primary != theirs.primary
                && !primary
                && self.primary_changed(&mut st, peer, theirs)
            {
                return Ok(());
            }
            let Some(p) = st.peers.get_mut(peer) else {
                return Ok(());
            };
            if p.resync_end_sent
                && theirs.disk == DiskState::UpToDate
                && theirs.generations.current == my_current
            {
                let r = p.resync_source.take();
                p.resync_end_sent = false;
                p.resyncs_completed += 1;
                completed = r.map(|r| (r.done_bytes, r.started));
            } else if theirs.primary
                && !primary
                && disk == DiskState::UpToDate
                && p.resync_target.is_none()
                && theirs.generations.current != my_current
                && p.core.is_up()
            {
                adopt = true;
            }
            if adopt {
                st.gens.synced_with(peer, theirs.generations.current);
            }
            if let Some((bytes, started)) = &completed {
                st.gens.synced_with(peer, my_current);
                let now = self.now();
                drop(st);
                self.emit(
                    EventKind::ResyncCompleted,
                    &[
                        ("peer", peer.to_string()),
                        ("direction", "source".into()),
                        ("bytes", bytes.to_string()),
                        (
                            "duration_ms",
                            now.saturating_sub(*started).as_millis().to_string(),
                        ),
                    ],
                );
                let mut st = self.lock();
                if st
                    .peers
                    .get(peer)
                    .is_some_and(|p| !p.core.bitmap().is_clean())
                {
                    st.gens.track(peer);
                    self.maybe_start_resync(&mut st, peer, false);
                }
            }
        }
        if adopt || completed.is_some() {
            let copy = self.lock().copy_meta(self.size);
            self.meta.save_copy(&copy).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The cluster declared `peer` dead (silent on every heartbeat path). A powered-off
    /// node never resets its TCP connection, so its link is treated as lost now: the
    /// session ends, what it lacks is marked, and a secondary no longer sees it as
    /// primary (so this copy may be promoted). Synchronous, so the daemon calls it
    /// before placement acts on the death.
    ///
    /// The link is marked lost (unclean: a sync peer is frozen for fencing) before the
    /// session is told to end: woken first, the session ended itself as a clean,
    /// administrative disconnect and, when it took the lock first, the primary went on
    /// acknowledging writes without listing the peer for outdating.
    pub fn peer_dead(&self, peer: &str) {
        let (session, end) = {
            let st = self.lock();
            let Some(p) = st.peers.get(peer) else {
                return;
            };
            if p.tx.is_none() {
                return;
            }
            (p.session, p.end_session.clone())
        };
        let down =
            link::LinkDown::new(LinkDownCause::NodeLost, "the node was declared dead", false);
        self.on_link_down(peer, session, &down);
        // The dying session's own callbacks are stale from now on.
        if let Some(p) = self.lock().peers.get_mut(peer) {
            p.session += 1;
            p.end_cause = Some(LinkDownCause::NodeLost);
        }
        if let Some(end) = end {
            end.notify_one();
        }
    }

    /// The link ended. Marks what the peer may lack, freezes writes (fencing) if a
    /// sync peer was lost unexpectedly, and mints a generation for it if primary.
    pub(crate) fn on_link_down(&self, peer: &str, session: u64, down: &link::LinkDown) {
        let clean = down.clean;
        let mut resync_failed = false;
        {
            let mut st = self.lock();
            let primary = st.primary;
            let fencing = self.spec.fencing;
            let shutting_down = st.shutting_down;
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return;
            };
            let was_up = p.core.is_up();
            let waiting = p.core.link_down();
            if let Some(mut r) = p.resync_source.take() {
                r.abort(p.core.bitmap_mut());
                resync_failed = true;
            }
            p.resync_end_sent = false;
            if p.resync_target.take().is_some() {
                resync_failed = true;
            }
            if p.verify.take().is_some() {
                if let Some(v) = &mut p.verify_status {
                    v.running = false;
                }
            }
            p.tx = None;
            p.end_session = None;
            let followed = std::mem::take(&mut p.peer_primary);
            p.awaiting_bitmap = false;
            if p.conn == Conn::Connected {
                p.conn = if p.admin_down {
                    Conn::Disconnected
                } else {
                    Conn::Connecting
                };
            }
            let peer_promotable = p.peer_disk.is_some_and(DiskState::promotable);
            let freeze = primary
                && fencing
                && was_up
                && !clean
                && !shutting_down
                && p.spec.mode == ReplicationMode::Sync
                && peer_promotable
                && !p.core.paused();
            let waiters: Vec<_> = waiting.iter().filter_map(|s| p.waiters.remove(s)).collect();
            p.waiters.clear();
            if freeze {
                st.frozen.insert(peer.to_string());
            }
            if primary && was_up {
                st.gens.diverge(&[peer], random_generation());
            }
            if followed && !primary {
                st.primary_lost();
            }
            for w in waiters {
                let _ = w.send(PeerOutcome::Lost);
            }
        }
        self.bump();
        let copy = self.lock().copy_meta(self.size);
        if let Err(e) = self.meta.save_copy(&copy) {
            tracing::error!(error = %e, "cannot persist the generations after losing a peer");
        }
        let bm = self.lock().peers.get(peer).map(|p| p.core.bitmap().clone());
        if let Some(bm) = bm {
            if let Err(e) = self.meta.save_bitmap(peer, &bm) {
                tracing::error!(error = %e, "cannot persist the bitmap after losing a peer");
            }
        }
        // Connected copies learn the new generation.
        self.broadcast_state();
        let fields = [
            ("peer", peer.to_string()),
            ("reason", down.cause.name().to_string()),
            ("detail", down.detail.clone()),
        ];
        if resync_failed {
            self.emit(EventKind::ResyncFailed, &fields);
        }
        self.emit(EventKind::MirrorDisconnected, &fields);
    }
}
