//! The connection tasks of a mirror: the listener, one task per peer that dials (the
//! node with the lexically smaller name dials) or takes accepted connections, and per
//! session a frame writer, an in-order applier (the secondary/target side) and the
//! resync/verify driver (the source side). Decisions come from the shared state in the
//! parent module and its pure core; these tasks only move frames and bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::core::{block_digests, ResyncStep, StaleEpoch, CHUNK_BYTES};
use super::{Conn, Mirror, TargetRun};
use crate::event::{unix_ms, EventKind};
use crate::mirror::bitmap::BLOCK_BYTES;
use crate::mirror::generation::{DiskState, OwnershipEpoch};
use crate::mirror::status::LinkDownCause;
use crate::mirror::wire::compress::Compress;
use crate::mirror::wire::{
    handshake, CopyState, Frame, HandshakeParams, LinkReader, LinkWriter, PeerHello, WireError,
};
use crate::mirror::{Export, ExportError};

/// Errors of a link session (logged and shown as the disconnect reason).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("local volume: {0}")]
    Volume(#[from] ExportError),
    #[error("metadata: {0}")]
    Meta(String),
    /// A frame of an older ownership epoch than this copy follows (never applied).
    #[error(transparent)]
    StaleEpoch(#[from] StaleEpoch),
}

/// Replicated writes the secondary applies at once (non-overlapping, in one batch).
const APPLY_BATCH: usize = 16;
/// Resync frames the target applies before it syncs and acknowledges them.
const RESYNC_ACK_BATCH: u64 = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(crate) type Reader = LinkReader<OwnedReadHalf>;
pub(crate) type Writer = LinkWriter<OwnedWriteHalf>;

/// An authenticated connection from a peer, handed from the listener to its task.
pub(crate) struct Accepted {
    reader: Reader,
    writer: Writer,
    hello: PeerHello,
}

fn params(m: &Mirror, encrypt: bool, compress: Compress) -> HandshakeParams {
    HandshakeParams {
        cluster: m.spec.cluster.clone(),
        mirror: m.spec.name.clone(),
        local_node: m.spec.local_node.clone(),
        key: m.spec.key.clone(),
        encrypt,
        compress,
    }
}

/// Accepts connections, authenticates them and hands them to their peer's task.
pub(crate) async fn listen(m: Arc<Mirror>, listener: TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        let m = Arc::clone(&m);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            // Compression: what the link to the connecting address asks for (the
            // dialler asks for its link's encryption).
            let p = params(&m, false, m.compress_for(addr.ip()));
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(r, w, &p, None)).await {
                Ok(Ok((reader, writer, hello))) => {
                    let Some(tx) = m.accepted.get(&hello.node) else {
                        tracing::warn!(peer = %hello.node, %addr, "connection from a node that is not a peer of this mirror");
                        return;
                    };
                    if hello.node.as_str() > m.spec.local_node.as_str() {
                        tracing::warn!(peer = %hello.node, "peer dialled although this node dials it");
                        return;
                    }
                    let _ = tx
                        .send(Accepted {
                            reader,
                            writer,
                            hello,
                        })
                        .await;
                }
                Ok(Err(WireError::AuthFailed)) => {
                    tracing::warn!(%addr, "replication peer failed authentication (wrong cluster key?)");
                    for peer in m.peers_at(addr.ip()) {
                        m.on_auth_failed(&peer);
                    }
                }
                Ok(Err(e)) => tracing::warn!(%addr, error = %e, "replication handshake failed"),
                Err(_) => tracing::warn!(%addr, "replication handshake timed out"),
            }
        });
    }
}

async fn dial(m: &Mirror, peer: &str) -> Result<Accepted, LinkError> {
    let spec = m
        .spec
        .peers
        .iter()
        .find(|p| p.node == peer)
        .ok_or_else(|| LinkError::Protocol(format!("unknown peer {peer}")))?;
    let stream = tokio::time::timeout(BACKOFF_MAX, TcpStream::connect(spec.address))
        .await
        .map_err(|_| LinkError::Timeout)?
        .map_err(LinkError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let p = params(m, spec.encrypt, spec.compress);
    let (reader, writer, hello) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(r, w, &p, Some(peer)))
            .await
            .map_err(|_| LinkError::Timeout)??;
    Ok(Accepted {
        reader,
        writer,
        hello,
    })
}

/// Keeps the link to one peer up: dials or waits for it, runs sessions, backs off.
pub(crate) async fn peer_task(
    m: Arc<Mirror>,
    peer: String,
    mut accepted: mpsc::Receiver<Accepted>,
) {
    let dials = m.spec.local_node.as_str() < peer.as_str();
    let mut shutdown = m.shutdown.subscribe();
    let mut backoff = BACKOFF_MIN;
    let mut pending: Option<Accepted> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (kick, admin_down) = {
            let st = m.lock();
            match st.peers.get(&peer) {
                Some(p) => (Arc::clone(&p.kick), p.held_down() || st.shutting_down),
                None => return,
            }
        };
        if admin_down {
            pending = None;
            tokio::select! {
                _ = kick.notified() => {}
                a = accepted.recv() => {
                    // Refuse: the link stays down.
                    if let Some(mut a) = a {
                        let _ = a.writer.send(&Frame::Bye { reason: "disconnected by the administrator".into() }).await;
                    }
                }
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let link = if let Some(a) = pending.take() {
            Ok(a)
        } else if dials {
            tokio::select! {
                r = dial(&m, &peer) => r,
                _ = kick.notified() => continue,
                _ = shutdown.changed() => return,
            }
        } else {
            tokio::select! {
                a = accepted.recv() => match a {
                    Some(a) => Ok(a),
                    None => return,
                },
                _ = kick.notified() => continue,
                _ = shutdown.changed() => return,
            }
        };
        let established = match link {
            Ok(a) => {
                tracing::debug!(
                    version = a.hello.version,
                    encrypted = a.hello.encrypted,
                    compress = a.hello.compress.name(),
                    "link authenticated"
                );
                let end = run_session(&m, &peer, a, &mut accepted).await;
                pending = end.replaced_by;
                end.established
            }
            Err(e) => {
                if matches!(e, LinkError::Wire(WireError::AuthFailed)) {
                    tracing::warn!(error = %e, "peer refused: authentication failed");
                    m.on_auth_failed(&peer);
                } else {
                    tracing::debug!(error = %e, "cannot reach peer");
                }
                false
            }
        };
        // Only a session that got going resets the backoff: a peer that authenticates
        // and then fails the state exchange is not redialled in a tight loop.
        if established {
            backoff = BACKOFF_MIN;
        } else if pending.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// How a session on an authenticated link ended.
struct SessionEnd {
    /// The state exchange passed and the session ran.
    established: bool,
    /// A newer connection from the same peer that replaced it.
    replaced_by: Option<Accepted>,
}

impl SessionEnd {
    /// Ended before it ran.
    const REFUSED: SessionEnd = SessionEnd {
        established: false,
        replaced_by: None,
    };
}

/// Payload bytes a link task handles between two yields to the runtime. Each large
/// frame is encrypted or decrypted (and, in a debug build, slowly): a long run of them
/// must not keep the worker thread, and the tasks queued behind it there (another
/// link's keepalive, the quorum transport), for seconds. A lab resync once starved a
/// node's other link into its 6 s timeout that way.
const YIELD_EVERY_BYTES: usize = 1 << 20;

/// Counts payload bytes and yields once [`YIELD_EVERY_BYTES`] have passed.
#[derive(Default)]
struct Fairness {
    since_yield: usize,
}

impl Fairness {
    async fn after(&mut self, frame_bytes: usize) {
        self.since_yield += frame_bytes;
        if self.since_yield >= YIELD_EVERY_BYTES {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// The payload a frame carries (a write's or a resync chunk's data), else 0.
fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Write { data, .. } | Frame::ResyncData { data, .. } => data.len(),
        _ => 0,
    }
}

/// Writes queued frames in order, coalescing bursts into few socket writes.
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) -> Result<(), WireError> {
    let mut fairness = Fairness::default();
    while let Some(frame) = rx.recv().await {
        let bye = matches!(frame, Frame::Bye { .. });
        writer.feed(&frame).await?;
        fairness.after(payload_len(&frame)).await;
        if bye {
            writer.flush().await?;
            break;
        }
        // Batch: flush only once the queue is empty for now.
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    Ok(())
}

/// One session on an authenticated link.
async fn run_session(
    m: &Arc<Mirror>,
    peer: &str,
    link: Accepted,
    accepted: &mut mpsc::Receiver<Accepted>,
) -> SessionEnd {
    let Accepted {
        mut reader,
        mut writer,
        hello,
        ..
    } = link;
    m.note_protocol(peer, hello.version);
    if let Some(counters) = m.compression_counters(peer) {
        writer.count_compression(counters);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(write_loop(writer, rx));
    let Some(theirs) = exchange_state(m, peer, &mut reader, &tx).await else {
        writer_task.abort();
        return SessionEnd::REFUSED;
    };
    if let Err(why) = m.admit_epoch(peer, &theirs).await {
        let _ = tx.send(Frame::Bye {
            reason: why.to_string(),
        });
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_millis(500), writer_task).await;
        // Not a split brain: the link retries with its backoff (a deposed primary
        // that steps down may follow the new owner), not in a tight loop.
        return SessionEnd::REFUSED;
    }
    let end = Arc::new(Notify::new());
    let id = match m
        .connect_planned(peer, &theirs, tx.clone(), Arc::clone(&end))
        .await
    {
        Ok(id) => id,
        Err(why) => {
            let _ = tx.send(Frame::Bye {
                reason: why.to_string(),
            });
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_millis(500), writer_task).await;
            m.on_stay_apart(peer, &why);
            m.split_brain_pause(peer).await;
            return SessionEnd::REFUSED;
        }
    };
    let mut session = Session::start(m, peer, id, tx, end, writer_task);
    let (down, next) = session.run(&mut reader, accepted).await;
    session.close(&down).await;
    SessionEnd {
        established: true,
        replaced_by: next,
    }
}

/// Sends this node's `State` and waits for the peer's; `None` if the peer refused the
/// session or answered with anything else.
async fn exchange_state(
    m: &Mirror,
    peer: &str,
    reader: &mut Reader,
    tx: &mpsc::UnboundedSender<Frame>,
) -> Option<CopyState> {
    let mine = {
        let st = m.lock();
        m.copy_state(&st, peer)
    };
    let _ = tx.send(Frame::State(mine));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.recv()).await {
        Ok(Ok(Frame::State(s))) if s.node == peer => Some(s),
        Ok(Ok(Frame::Bye { reason })) => {
            tracing::info!(%reason, "peer refused the session");
            None
        }
        other => {
            tracing::warn!(?other, "expected the peer's State");
            None
        }
    }
}

/// An established session: its frame channels, the tasks it runs (frame writer,
/// applier, resync/verify driver, keepalive) and its link-timeout clock.
struct Session<'a> {
    m: &'a Arc<Mirror>,
    peer: &'a str,
    id: u64,
    tx: mpsc::UnboundedSender<Frame>,
    apply_tx: mpsc::UnboundedSender<Frame>,
    /// Notified when this node ends the session (shutdown or the administrator).
    end: Arc<Notify>,
    writer_task: JoinHandle<Result<(), WireError>>,
    /// The writer task was awaited to completion (so it must not be awaited again).
    writer_done: bool,
    applier: JoinHandle<()>,
    /// Why the applier failed.
    fail_rx: oneshot::Receiver<String>,
    driver: JoinHandle<()>,
    keepalive: JoinHandle<()>,
    /// When a frame was last heard from the peer, in ms after `epoch`.
    heard_ms: Arc<AtomicU64>,
    epoch: Instant,
    timeout: Duration,
    /// Fires once the peer has been silent for the whole link timeout.
    silent_rx: oneshot::Receiver<()>,
}

impl<'a> Session<'a> {
    /// Spawns the session's applier, resync/verify driver and keepalive.
    fn start(
        m: &'a Arc<Mirror>,
        peer: &'a str,
        id: u64,
        tx: mpsc::UnboundedSender<Frame>,
        end: Arc<Notify>,
        writer_task: JoinHandle<Result<(), WireError>>,
    ) -> Self {
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (fail_tx, fail_rx) = oneshot::channel::<String>();
        let applier = tokio::spawn(apply_loop(
            Arc::clone(m),
            peer.to_string(),
            id,
            apply_rx,
            tx.clone(),
            fail_tx,
        ));
        let driver = tokio::spawn(drive_loop(Arc::clone(m), peer.to_string(), id, tx.clone()));
        // Keepalive: pings at a quarter of the link timeout; a whole timeout without a
        // frame from the peer ends the session, so a silently dead link cannot hold a
        // sync primary's writes for as long as TCP takes to give up.
        let timeout = m
            .spec
            .peers
            .iter()
            .find(|p| p.node == peer)
            .map_or(DEFAULT_LINK_TIMEOUT, |p| p.timeout);
        let epoch = Instant::now();
        let heard_ms = Arc::new(AtomicU64::new(0));
        let (silent_tx, silent_rx) = oneshot::channel::<()>();
        let keepalive = tokio::spawn(keepalive_loop(
            tx.clone(),
            Arc::clone(&heard_ms),
            epoch,
            timeout,
            silent_tx,
        ));
        Session {
            m,
            peer,
            id,
            tx,
            apply_tx,
            end,
            writer_task,
            writer_done: false,
            applier,
            fail_rx,
            driver,
            keepalive,
            heard_ms,
            epoch,
            timeout,
            silent_rx,
        }
    }

    /// Handles the peer's frames until something ends the session; returns why, and
    /// the newer connection from the peer if one replaced it.
    async fn run(
        &mut self,
        reader: &mut Reader,
        accepted: &mut mpsc::Receiver<Accepted>,
    ) -> (LinkDown, Option<Accepted>) {
        use LinkDownCause::*;
        let mut next = None;
        let mut shutdown = self.m.shutdown.subscribe();
        let mut fairness = Fairness::default();
        let down = loop {
            tokio::select! {
                f = reader.recv() => {
                    let bytes = f.as_ref().map_or(0, payload_len);
                    if let Some(end) = self.on_read(f) {
                        break end;
                    }
                    fairness.after(bytes).await;
                },
                _ = self.end.notified() => break self.on_end(),
                r = &mut self.fail_rx => {
                    let reason = r.unwrap_or_else(|_| "applier stopped".into());
                    let _ = self.tx.send(Frame::Bye { reason: reason.clone() });
                    break LinkDown::new(Error, reason, false);
                }
                a = accepted.recv() => {
                    next = a;
                    break LinkDown::new(Replaced, "replaced by a new connection from the peer", false);
                }
                w = &mut self.writer_task => {
                    self.writer_done = true;
                    break LinkDown::new(Error, match w {
                        Ok(Err(e)) => format!("sending: {e}"),
                        _ => "the frame writer stopped".into(),
                    }, false);
                }
                _ = shutdown.changed() => break LinkDown::new(Shutdown, "shutdown", true),
                _ = &mut self.silent_rx => break LinkDown::new(
                    LinkTimeout,
                    format!("nothing from the peer for {} ms", self.timeout.as_millis()),
                    false,
                ),
            }
        };
        (down, next)
    }

    /// Handles one read from the peer; `Some` if it ends the session.
    fn on_read(&self, read: Result<Frame, WireError>) -> Option<LinkDown> {
        use LinkDownCause::*;
        match read {
            Ok(Frame::Bye { reason }) => Some(LinkDown::new(PeerClosed, reason, true)),
            Ok(frame) => {
                let heard = self.epoch.elapsed().as_millis() as u64;
                self.heard_ms.store(heard, Ordering::Relaxed);
                let dispatched =
                    dispatch(self.m, self.peer, self.id, frame, &self.apply_tx, &self.tx);
                if let Err(e) = dispatched {
                    let _ = self.tx.send(Frame::Bye { reason: e.clone() });
                    return Some(LinkDown::new(Error, e, false));
                }
                None
            }
            Err(WireError::Closed) => Some(LinkDown::new(
                PeerClosed,
                "the peer closed the connection",
                false,
            )),
            Err(e) => Some(LinkDown::new(Error, e.to_string(), false)),
        }
    }

    /// Says goodbye when this node ends the session (the cause its ender recorded, an
    /// administrator's disconnect, or the shutdown); the end is clean.
    fn on_end(&self) -> LinkDown {
        let cause = {
            let mut st = self.m.lock();
            let shutting_down = st.shutting_down;
            let recorded = st.peers.get_mut(self.peer).and_then(|p| p.end_cause.take());
            match recorded {
                Some(c) => c,
                None if shutting_down => LinkDownCause::Shutdown,
                None => LinkDownCause::Admin,
            }
        };
        let _ = self.tx.send(Frame::Bye {
            reason: cause.name().into(),
        });
        LinkDown::new(cause, cause.name(), true)
    }

    /// Tears the session down: stops its tasks, reports the link down and gives the
    /// frame writer a moment to send what is queued (the goodbye).
    async fn close(self, down: &LinkDown) {
        tracing::info!(reason = down.cause.name(), detail = %down.detail, "link down");
        self.keepalive.abort();
        self.applier.abort();
        self.driver.abort();
        self.m.on_link_down(self.peer, self.id, down);
        drop(self.tx);
        drop(self.apply_tx);
        if !self.writer_done {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.writer_task).await;
        }
    }
}

/// Why a session ended: the cause, what happened, and whether the end was clean (an
/// orderly goodbye: nothing was lost in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkDown {
    pub cause: LinkDownCause,
    pub detail: String,
    pub clean: bool,
}

impl LinkDown {
    pub(crate) fn new(cause: LinkDownCause, detail: impl Into<String>, clean: bool) -> LinkDown {
        LinkDown {
            cause,
            detail: detail.into(),
            clean,
        }
    }
}

/// The link timeout of a peer missing from the spec (never, in practice).
const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(6);

/// Sends a `Ping` every quarter of `timeout`; signals `silent` once nothing has been
/// heard from the peer (`heard_ms` after `epoch`) for the whole timeout.
async fn keepalive_loop(
    tx: mpsc::UnboundedSender<Frame>,
    heard_ms: Arc<AtomicU64>,
    epoch: Instant,
    timeout: Duration,
    silent: oneshot::Sender<()>,
) {
    let mut tick = tokio::time::interval(timeout / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    loop {
        tick.tick().await;
        let heard = Duration::from_millis(heard_ms.load(Ordering::Relaxed));
        if epoch.elapsed().saturating_sub(heard) >= timeout {
            let _ = silent.send(());
            return;
        }
        nonce += 1;
        if tx.send(Frame::Ping { nonce }).is_err() {
            // The session is ending; it aborts this task.
            std::future::pending::<()>().await;
        }
    }
}

/// Handles one received frame on the session's reader.
fn dispatch(
    m: &Arc<Mirror>,
    peer: &str,
    session: u64,
    frame: Frame,
    apply_tx: &mpsc::UnboundedSender<Frame>,
    tx: &mpsc::UnboundedSender<Frame>,
) -> Result<(), String> {
    match frame {
        Frame::State(s) => m.on_state_update(peer, session, &s),
        Frame::Ack { seq } => m.on_ack(peer, session, seq),
        Frame::Nack { seq, errno } => Err(format!("peer failed operation {seq} (errno {errno})")),
        f @ (Frame::Write { .. }
        | Frame::Trim { .. }
        | Frame::Zeroes { .. }
        | Frame::Flush { .. }
        | Frame::PeerAck { .. }) => {
            let st = m.lock();
            let from_primary = st.peers.get(peer).is_some_and(|p| p.peer_primary);
            if st.primary || !from_primary {
                return Err("replicated write from a peer that is not primary".into());
            }
            drop(st);
            apply_tx.send(f).map_err(|_| "applier stopped".to_string())
        }
        f @ (Frame::ResyncBegin { .. }
        | Frame::ResyncData { .. }
        | Frame::ResyncZero { .. }
        | Frame::ResyncEnd { .. }) => {
            if m.lock().primary {
                return Err("a primary cannot be a resync target".into());
            }
            apply_tx.send(f).map_err(|_| "applier stopped".to_string())
        }
        f @ Frame::VerifyRequest { .. } => {
            apply_tx.send(f).map_err(|_| "applier stopped".to_string())
        }
        Frame::ResyncAck { offset, len } => m.on_resync_ack(peer, session, offset, u64::from(len)),
        Frame::VerifyDigests { offset, digests } => {
            let m = Arc::clone(m);
            let peer = peer.to_string();
            tokio::spawn(async move { m.on_verify_digests(&peer, session, offset, digests).await });
            Ok(())
        }
        Frame::Ping { nonce } => tx
            .send(Frame::Pong { nonce })
            .map_err(|_| "writer stopped".to_string()),
        Frame::Pong { .. } => Ok(()),
        Frame::Bye { .. } => Ok(()),
        Frame::BitmapRuns { runs } => {
            m.on_bitmap_runs(peer, session, &runs);
            Ok(())
        }
        Frame::BitmapEnd { dirty_blocks } => {
            m.on_bitmap_end(peer, session, dirty_blocks);
            Ok(())
        }
    }
}

/// Applies the peer's operations in order and acknowledges them (cumulatively, after an
/// fdatasync when a FUA write, a flush or resync data is among them).
async fn apply_loop(
    m: Arc<Mirror>,
    peer: String,
    session: u64,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    tx: mpsc::UnboundedSender<Frame>,
    fail: oneshot::Sender<String>,
) {
    let applier = Applier::new(&m, &peer, session, &mut rx, &tx);
    if let Err(e) = applier.run().await {
        let _ = fail.send(e.to_string());
    }
}

/// A replicated write: sequence number, offset, FUA, data.
type QueuedWrite = (u64, u64, bool, Vec<u8>);

/// The secondary's (and resync target's) in-order apply state for one session.
struct Applier<'a> {
    m: &'a Arc<Mirror>,
    peer: &'a str,
    session: u64,
    rx: &'a mut mpsc::UnboundedReceiver<Frame>,
    tx: &'a mpsc::UnboundedSender<Frame>,
    /// The last replicated operation applied.
    applied_seq: u64,
    /// The last replicated operation acknowledged.
    acked_seq: u64,
    /// An fdatasync is owed before the next acknowledgement (FUA write or flush).
    need_sync: bool,
    /// Resync chunks written but not yet synced and acknowledged.
    resync_acks: Vec<(u64, u32)>,
    resync_pending_bytes: u64,
    /// A frame taken off the channel while batching writes, applied next.
    carry: Option<Frame>,
}

impl<'a> Applier<'a> {
    /// A fresh applier: nothing applied, acknowledged or owed yet.
    fn new(
        m: &'a Arc<Mirror>,
        peer: &'a str,
        session: u64,
        rx: &'a mut mpsc::UnboundedReceiver<Frame>,
        tx: &'a mpsc::UnboundedSender<Frame>,
    ) -> Self {
        Applier {
            m,
            peer,
            session,
            rx,
            tx,
            applied_seq: 0,
            acked_seq: 0,
            need_sync: false,
            resync_acks: Vec::new(),
            resync_pending_bytes: 0,
            carry: None,
        }
    }

    /// Applies frames until the channel closes (`Ok`) or one fails.
    async fn run(mut self) -> Result<(), LinkError> {
        while let Some(frame) = self.next_frame().await {
            {
                // No newer epoch is followed while a frame is checked and applied.
                let _shared = self.m.epoch_gate.read().await;
                if let Some(epoch) = frame.epoch() {
                    self.m.lock().epoch.check(epoch)?;
                }
                self.apply(frame).await?;
            }
            self.acknowledge_when_idle().await?;
        }
        Ok(())
    }

    /// The frame carried over from write batching, else the next one on the channel.
    async fn next_frame(&mut self) -> Option<Frame> {
        match self.carry.take() {
            Some(f) => Some(f),
            None => self.rx.recv().await,
        }
    }

    /// Applies one frame (a write takes the writes queued right behind it along).
    async fn apply(&mut self, frame: Frame) -> Result<(), LinkError> {
        match frame {
            Frame::Write {
                seq,
                epoch,
                offset,
                fua,
                data,
            } => self.write_batch(epoch, (seq, offset, fua, data)).await,
            Frame::Trim {
                seq, offset, len, ..
            } => {
                self.m
                    .secondary_activity(seq, offset, u64::from(len))
                    .await?;
                let result = self.m.volume.trim(offset, len).await;
                self.settle(seq, result)
            }
            Frame::Zeroes {
                seq, offset, len, ..
            } => {
                self.m
                    .secondary_activity(seq, offset, u64::from(len))
                    .await?;
                let result = self.m.volume.write_zeroes(offset, len, true, false).await;
                self.settle(seq, result)
            }
            Frame::Flush { seq, .. } => {
                self.need_sync = true;
                self.settle(seq, Ok(()))
            }
            Frame::PeerAck { upto, holders } => self
                .m
                .on_peer_ack(self.peer, self.session, upto, &holders)
                .map_err(LinkError::Protocol),
            Frame::ResyncBegin {
                full, total_bytes, ..
            } => {
                let (peer, session) = (self.peer, self.session);
                self.m
                    .on_resync_begin(peer, session, full, total_bytes)
                    .await
            }
            Frame::ResyncData { offset, data, .. } => {
                let len = data.len() as u32;
                self.m.volume.write(offset, data, false).await?;
                self.resync_written(offset, len);
                Ok(())
            }
            Frame::ResyncZero { offset, len, .. } => {
                self.m.volume.write_zeroes(offset, len, true, false).await?;
                self.resync_written(offset, len);
                Ok(())
            }
            Frame::ResyncEnd { generation, .. } => self.resync_end(generation).await,
            Frame::VerifyRequest { offset, len } => self.verify(offset, len).await,
            _ => Ok(()),
        }
    }

    /// Records replicated operation `seq` as applied (its range, if any, became
    /// unproven before it was written), or NACKs it and fails.
    fn settle(&mut self, seq: u64, result: Result<(), ExportError>) -> Result<(), LinkError> {
        if let Err(e) = result {
            let _ = self.tx.send(Frame::Nack {
                seq,
                errno: e.errno(),
            });
            return Err(LinkError::Volume(e));
        }
        self.applied_seq = seq;
        self.m.lock().unproven.seen(seq);
        Ok(())
    }

    /// Applies a run of non-overlapping writes at once (the primary had them in flight
    /// together); anything else waits until they are done. Their activity-log extents
    /// are made hot first; each is settled (or the first failure NACKed). Only writes
    /// of `epoch` (the first's, checked) join the batch.
    async fn write_batch(
        &mut self,
        epoch: OwnershipEpoch,
        first: QueuedWrite,
    ) -> Result<(), LinkError> {
        let batch = self.take_writes(epoch, first);
        for (seq, offset, _, data) in &batch {
            self.m
                .secondary_activity(*seq, *offset, data.len() as u64)
                .await?;
        }
        self.need_sync |= batch.iter().any(|w| w.2);
        let seqs: Vec<u64> = batch.iter().map(|w| w.0).collect();
        let volume = &self.m.volume;
        let writes = batch
            .into_iter()
            .map(|(_, offset, _, data)| volume.write(offset, data, false));
        let results = futures::future::join_all(writes).await;
        for (seq, result) in seqs.into_iter().zip(results) {
            self.settle(seq, result)?;
        }
        Ok(())
    }

    /// `first` and the writes queued right behind it that overlap none before them, up
    /// to `APPLY_BATCH`; the first other frame is carried over.
    fn take_writes(&mut self, epoch: OwnershipEpoch, first: QueuedWrite) -> Vec<QueuedWrite> {
        let mut batch = vec![first];
        while batch.len() < APPLY_BATCH {
            match self.rx.try_recv() {
                Ok(Frame::Write {
                    seq,
                    epoch: e,
                    offset,
                    fua,
                    data,
                }) if e == epoch
                    && !batch.iter().any(|(_, o, _, d)| {
                        offset < o + d.len() as u64 && *o < offset + data.len() as u64
                    }) =>
                {
                    batch.push((seq, offset, fua, data))
                }
                Ok(other) => {
                    self.carry = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Counts resync data written at `offset`; it is acknowledged after the next sync.
    fn resync_written(&mut self, offset: u64, len: u32) {
        self.m
            .on_resync_progress(self.peer, self.session, u64::from(len));
        self.resync_acks.push((offset, len));
        self.resync_pending_bytes += u64::from(len);
    }

    /// Ends a resync: syncs, acknowledges every chunk still pending and completes it.
    async fn resync_end(&mut self, generation: u64) -> Result<(), LinkError> {
        self.m.volume.flush().await?;
        for (offset, len) in self.resync_acks.drain(..) {
            let _ = self.tx.send(Frame::ResyncAck { offset, len });
        }
        self.resync_pending_bytes = 0;
        let (peer, session) = (self.peer, self.session);
        self.m.on_resync_end(peer, session, generation).await
    }

    /// Answers a verify request with the digests of the local blocks it covers.
    async fn verify(&self, offset: u64, len: u32) -> Result<(), LinkError> {
        let len = u64::from(len)
            .min(self.m.size.saturating_sub(offset))
            .min(CHUNK_BYTES) as u32;
        let data = self.m.volume.read(offset, len).await?;
        // Hashing is CPU work: keep it off the runtime, or a verify starves
        // the heartbeats and the cluster declares this node dead.
        let digests = tokio::task::spawn_blocking(move || block_digests(&data))
            .await
            .unwrap_or_default();
        let _ = self.tx.send(Frame::VerifyDigests { offset, digests });
        Ok(())
    }

    /// Once nothing more is queued (or enough resync data is pending), syncs if owed
    /// and acknowledges the operations and resync chunks applied so far.
    async fn acknowledge_when_idle(&mut self) -> Result<(), LinkError> {
        let idle = self.rx.is_empty() && self.carry.is_none();
        if !idle && self.resync_pending_bytes < RESYNC_ACK_BATCH {
            return Ok(());
        }
        if self.need_sync || !self.resync_acks.is_empty() {
            self.m.volume.flush().await?;
            self.need_sync = false;
        }
        if self.applied_seq > self.acked_seq {
            let _ = self.tx.send(Frame::Ack {
                seq: self.applied_seq,
            });
            self.acked_seq = self.applied_seq;
        }
        for (offset, len) in self.resync_acks.drain(..) {
            let _ = self.tx.send(Frame::ResyncAck { offset, len });
        }
        self.resync_pending_bytes = 0;
        Ok(())
    }
}

/// The source side's resync and verify driver for one session.
async fn drive_loop(m: Arc<Mirror>, peer: String, session: u64, tx: mpsc::UnboundedSender<Frame>) {
    let Some(kick) = m.lock().peers.get(&peer).map(|p| Arc::clone(&p.kick)) else {
        return;
    };
    loop {
        while let Some((offset, len)) = m.next_verify_request(&peer, session) {
            let _ = tx.send(Frame::VerifyRequest {
                offset,
                len: len as u32,
            });
        }
        match m.next_resync_step(&peer, session) {
            Some(ResyncStep::Begin) => {
                if let Err(e) = m.begin_resync(&peer, session).await {
                    tracing::error!(error = %e, "cannot flush before a resync");
                    m.end_session_of(&peer);
                    return;
                }
            }
            Some(ResyncStep::Chunk { offset, len }) => {
                if let Err(e) = m.send_resync_chunk(&peer, session, offset, len).await {
                    tracing::error!(error = %e, "resync read failed");
                    m.end_session_of(&peer);
                    return;
                }
            }
            Some(ResyncStep::WaitRate(d)) => tokio::time::sleep(d).await,
            Some(ResyncStep::End) => m.send_resync_end(&peer, session),
            Some(ResyncStep::WaitAck | ResyncStep::Drain) | None => {
                let _ = tokio::time::timeout(Duration::from_millis(500), kick.notified()).await;
            }
        }
    }
}

impl Mirror {
    pub(crate) fn next_verify_request(&self, peer: &str, session: u64) -> Option<(u64, u64)> {
        let mut st = self.lock();
        let p = st.peers.get_mut(peer).filter(|p| p.session == session)?;
        p.verify.as_mut()?.next_request()
    }

    pub(crate) fn next_resync_step(&self, peer: &str, session: u64) -> Option<ResyncStep> {
        let now = self.now();
        let mut st = self.lock();
        let p = st.peers.get_mut(peer).filter(|p| p.session == session)?;
        if p.core.paused() || p.resync_end_sent || p.conn != Conn::Connected {
            return None;
        }
        let r = p.resync_source.as_mut()?;
        Some(r.next(p.core.bitmap(), now))
    }

    /// Ends `peer`'s session (its driver failed).
    fn end_session_of(&self, peer: &str) {
        if let Some(end) = self
            .lock()
            .peers
            .get(peer)
            .and_then(|p| p.end_session.clone())
        {
            end.notify_one();
        }
    }

    /// Sends ResyncBegin, the target then turns SyncTarget and stops protecting the
    /// writes it acknowledged so far. A primary first flushes its own disk, with no
    /// write in flight (the exclusive gate): those writes then survive its power loss
    /// too (found by `tests/mirror_sim_n.rs`: a crashed primary returned without a
    /// write that only its resync target still held). Every later write reaches the
    /// target after the begin.
    async fn begin_resync(&self, peer: &str, session: u64) -> Result<(), ExportError> {
        let _gate = self.gate.write().await;
        if self.lock().primary {
            self.volume.flush().await?;
        }
        let mut st = self.lock();
        let epoch = st.epoch.stamp();
        let allowed = st.may_resync_to(peer);
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return Ok(());
        };
        if !allowed {
            // Nothing went out yet: the bitmap still holds every block.
            p.resync_source = None;
            return Ok(());
        }
        let (Some(tx), Some(r)) = (p.tx.clone(), p.resync_source.as_mut()) else {
            return Ok(());
        };
        let (full, total) = (r.full, r.total_bytes);
        let begin = Frame::ResyncBegin {
            epoch,
            full,
            total_bytes: total,
        };
        if tx.send(begin).is_err() {
            return Ok(());
        }
        r.begin();
        let peer_marked = std::mem::take(&mut p.peer_marked_blocks) * BLOCK_BYTES;
        self.emit(
            EventKind::ResyncStarted,
            &[
                ("peer", peer.to_string()),
                ("direction", "source".into()),
                ("full", full.to_string()),
                ("bytes", total.to_string()),
                // Of which the peer asked for (its own bitmap, merged: a crashed
                // primary's activity log, a secondary's unproven ranges).
                ("peer_marked_bytes", peer_marked.to_string()),
            ],
        );
        Ok(())
    }

    /// Reads one resync chunk and queues it, atomically with respect to application
    /// writes (the exclusive gate), so a newer write can never be overtaken.
    async fn send_resync_chunk(
        &self,
        peer: &str,
        session: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), ExportError> {
        let _gate = self.gate.write().await;
        let len32 = len as u32;
        let extents = self.volume.block_status(offset, len32).await?;
        let covered: u64 = extents.iter().map(|e| u64::from(e.length)).sum();
        let zero_by_map = covered >= len && extents.iter().all(|e| e.zero);
        let data = if zero_by_map {
            None
        } else {
            Some(self.volume.read(offset, len32).await?).filter(|d| d.iter().any(|&b| b != 0))
        };
        let mut st = self.lock();
        let epoch = st.epoch.stamp();
        let frame = match data {
            None => Frame::ResyncZero {
                epoch,
                offset,
                len: len32,
            },
            Some(data) => Frame::ResyncData {
                epoch,
                offset,
                data,
            },
        };
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return Ok(());
        };
        let Some(tx) = p.tx.clone() else {
            return Ok(());
        };
        let Some(r) = p.resync_source.as_mut() else {
            return Ok(());
        };
        if tx.send(frame).is_ok() {
            r.sent(offset, len, p.core.bitmap_mut());
        }
        Ok(())
    }

    fn send_resync_end(&self, peer: &str, session: u64) {
        let mut st = self.lock();
        let generation = st.gens.current;
        let epoch = st.epoch.stamp();
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return;
        };
        if let Some(tx) = &p.tx {
            if tx.send(Frame::ResyncEnd { epoch, generation }).is_ok() {
                p.resync_end_sent = true;
            }
        }
    }

    pub(crate) fn on_resync_ack(
        &self,
        peer: &str,
        session: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let now = self.now();
        let mut st = self.lock();
        let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
            return Ok(());
        };
        let Some(r) = p.resync_source.as_mut() else {
            return Err("resync acknowledgement without a resync".into());
        };
        r.acked(offset, len, now).map_err(|e| e.to_string())?;
        p.resynced_bytes += len;
        p.kick.notify_one();
        Ok(())
    }

    /// The target side: persist SyncTarget (Inconsistent) before the first resync write.
    async fn on_resync_begin(
        &self,
        peer: &str,
        session: u64,
        full: bool,
        total_bytes: u64,
    ) -> Result<(), LinkError> {
        {
            let mut st = self.lock();
            if st.primary {
                return Err(LinkError::Protocol(
                    "a primary cannot be a resync target".into(),
                ));
            }
            let from_secondary = st.peers.get(peer).is_some_and(|p| !p.peer_primary);
            if from_secondary && st.followed.is_some() {
                return Err(LinkError::Protocol(
                    "this copy follows a primary and takes resyncs only from it".into(),
                ));
            }
            st.disk = DiskState::SyncTarget;
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return Err(LinkError::Protocol("stale session".into()));
            };
            p.resync_target = Some(TargetRun {
                full,
                total_bytes,
                done_bytes: 0,
                started: std::time::Instant::now(),
                started_ms: unix_ms(),
            });
        }
        let copy = self.lock().copy_meta(self.size);
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.save_copy(&copy))
            .await
            .map_err(|_| LinkError::Meta("metadata task failed".into()))?
            .map_err(|e| LinkError::Meta(e.to_string()))?;
        self.emit(
            EventKind::ResyncStarted,
            &[
                ("peer", peer.to_string()),
                ("direction", "target".into()),
                ("full", full.to_string()),
                ("bytes", total_bytes.to_string()),
            ],
        );
        Ok(())
    }

    fn on_resync_progress(&self, peer: &str, session: u64, len: u64) {
        let mut st = self.lock();
        if let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) {
            if let Some(t) = &mut p.resync_target {
                t.done_bytes += len;
            }
            p.resynced_bytes += len;
        }
    }

    /// The target side: everything is durable; adopt the source's generation.
    async fn on_resync_end(
        &self,
        peer: &str,
        session: u64,
        generation: u64,
    ) -> Result<(), LinkError> {
        let run = {
            let mut st = self.lock();
            st.gens.synced_with(peer, generation);
            st.disk = DiskState::UpToDate;
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return Err(LinkError::Protocol("stale session".into()));
            };
            let blocks = p.core.bitmap().blocks();
            p.core.bitmap_mut().clear_blocks(0, blocks);
            p.resyncs_completed += 1;
            p.resync_target.take()
        };
        let copy = self.lock().copy_meta(self.size);
        self.meta
            .save_copy(&copy)
            .map_err(|e| LinkError::Meta(e.to_string()))?;
        let bm = self.lock().peers.get(peer).map(|p| p.core.bitmap().clone());
        if let Some(bm) = bm {
            self.meta
                .save_bitmap(peer, &bm)
                .map_err(|e| LinkError::Meta(e.to_string()))?;
        }
        {
            let st = self.lock();
            if let Some(tx) = st.peers.get(peer).and_then(|p| p.tx.as_ref()) {
                let _ = tx.send(Frame::State(self.copy_state(&st, peer)));
            }
        }
        if let Some(run) = run {
            self.emit(
                EventKind::ResyncCompleted,
                &[
                    ("peer", peer.to_string()),
                    ("direction", "target".into()),
                    ("bytes", run.done_bytes.to_string()),
                    ("duration_ms", run.started.elapsed().as_millis().to_string()),
                ],
            );
        }
        Ok(())
    }

    /// The source side of a verify: compare the peer's digests with ours and mark the
    /// differing blocks.
    async fn on_verify_digests(
        &self,
        peer: &str,
        session: u64,
        offset: u64,
        remote: Vec<[u8; 32]>,
    ) {
        let len = (remote.len() as u64 * BLOCK_BYTES)
            .min(self.size.saturating_sub(offset))
            .min(CHUNK_BYTES);
        let local = match self.volume.read(offset, len as u32).await {
            // Off the runtime, like the target's side.
            Ok(d) => tokio::task::spawn_blocking(move || block_digests(&d))
                .await
                .unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "verify read failed");
                return;
            }
        };
        let mut finished = None;
        {
            let mut st = self.lock();
            let Some(p) = st.peers.get_mut(peer).filter(|p| p.session == session) else {
                return;
            };
            let Some(v) = p.verify.as_mut() else {
                return;
            };
            let differing = v.answered(offset, &local, &remote);
            let (checked, found, done) = (v.checked_bytes, v.out_of_sync_bytes, v.finished());
            for (o, l) in differing {
                p.core.mark_range(o, l);
            }
            if let Some(s) = &mut p.verify_status {
                s.checked_bytes = checked;
                s.out_of_sync_bytes = found;
                if done {
                    s.running = false;
                    s.finished_ms = Some(unix_ms());
                }
            }
            if done {
                p.verify = None;
                finished = Some(found);
            }
            p.kick.notify_one();
            if finished.is_some()
                && !st
                    .peers
                    .get(peer)
                    .is_some_and(|p| p.core.bitmap().is_clean())
            {
                st.gens.track(peer);
                self.maybe_start_resync(&mut st, peer, false);
            }
        }
        if let Some(found) = finished {
            self.emit(
                EventKind::VerifyCompleted,
                &[("peer", peer.to_string()), ("bytes", found.to_string())],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A task handling a long run of large frames lets the other tasks of its worker
    /// run between them: on a one-thread runtime, a task spawned beside 16 frames of
    /// 1 MiB runs before the last of them, not after (without the yield it could not).
    #[tokio::test(flavor = "current_thread")]
    async fn a_run_of_large_frames_yields_to_the_other_tasks() {
        let ran = Arc::new(AtomicU64::new(0));
        let seen_at = Arc::new(AtomicU64::new(u64::MAX));
        let other = {
            let ran = Arc::clone(&ran);
            let seen_at = Arc::clone(&seen_at);
            tokio::spawn(async move {
                seen_at.store(ran.load(Ordering::SeqCst), Ordering::SeqCst);
            })
        };
        let mut fairness = Fairness::default();
        let frame = Frame::ResyncData {
            epoch: Default::default(),
            offset: 0,
            data: vec![0; 1 << 20],
        };
        for _ in 0..16 {
            // The frame's work (encryption, decryption) would go here: no await.
            ran.fetch_add(1, Ordering::SeqCst);
            fairness.after(payload_len(&frame)).await;
        }
        other.await.unwrap();
        let at = seen_at.load(Ordering::SeqCst);
        assert!(at < 16, "the other task ran only after frame {at}");
        assert_eq!(payload_len(&Frame::Ack { seq: 1 }), 0);
    }
}
