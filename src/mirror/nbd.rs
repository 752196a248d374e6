//! An NBD server (fixed newstyle only) for any [`Export`], on a Unix socket and/or TCP.
//!
//! Negotiation ([`handshake`]) and request decoding ([`proto`]) are pure functions over
//! bytes; this module only moves bytes. Per connection, one task reads requests and
//! spawns one task per request, so requests run concurrently and replies may leave out
//! of order; one writer task owns the socket's write half and batches replies through a
//! buffered writer. A per-connection byte budget bounds the memory a client can make
//! the server hold. All connections share one export, so a flush (fdatasync of the
//! shared file) covers every write completed before it on any connection.
//!
//! With an [`NbdMetrics`] handle in the [`ServerConfig`], each request is timed from its
//! decoded header to its queued reply, and payload bytes and errors are counted, where
//! the request is answered (`tandem_nbd_*` on `/metrics`).

pub mod client;
pub mod handshake;
pub mod kernel;
pub mod metrics;
pub mod proto;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

use self::handshake::{
    decode_client_flags, decode_option_header, greeting, ExportInfo, Negotiation, Next, Session,
    MAX_OPTION_LEN, OPTION_HEADER_LEN,
};
use self::proto::*;
use super::{Export, ExportError, Extent};
use metrics::NbdMetrics;

/// Why a connection or the server ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{what} truncated: need {need} bytes, got {got}")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("client flags {0:#x} are not fixed newstyle or unknown")]
    ClientFlags(u32),
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("no listener: give a Unix socket path, a TCP address, or both")]
    NoListener,
}

/// Where and under which name the server offers its export.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Export name; clients asking for the empty name get this export too.
    pub name: String,
    /// Free text shown by `nbdinfo` and `NBD_OPT_LIST`.
    pub description: String,
    pub unix: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    /// Request metrics of this export (from `Metrics::nbd`); None records nothing.
    pub metrics: Option<Arc<NbdMetrics>>,
}

/// Bytes of requests and replies one connection may have in flight at once.
const IN_FLIGHT_BYTES: u32 = 64 << 20;
/// Budget charged per request besides its payload, which caps the number in flight.
const REQUEST_COST: u32 = 64 << 10;
/// Read buffer: small, so that payloads mostly bypass it instead of being copied twice.
const READ_BUFFER: usize = 8 << 10;
/// Write buffer, for batching replies.
const WRITE_BUFFER: usize = 256 << 10;

/// Connections served at once; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// Write payload buffers kept for reuse, and the largest one kept: steady traffic then
/// neither maps nor faults in fresh pages for every request.
const POOLED_BUFFERS: usize = 64;
const MAX_POOLED_BUFFER: usize = 1 << 20;

/// Recycled write payload buffers, shared by the connections of one server.
#[derive(Debug, Default)]
struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty buffer with room for `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .free
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default();
        buf.clear();
        buf.reserve_exact(len);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() > MAX_POOLED_BUFFER {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < POOLED_BUFFERS {
                free.push(buf);
            }
        }
    }
}

/// A write payload that goes back to its pool when the export is done with it.
struct Payload {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct NbdServer {
    config: ServerConfig,
    unix: Option<UnixListener>,
    tcp: Option<TcpListener>,
}

impl NbdServer {
    /// Binds the configured listeners. A stale Unix socket file at the path is replaced.
    pub async fn bind(config: ServerConfig) -> Result<NbdServer, NbdError> {
        if config.unix.is_none() && config.tcp.is_none() {
            return Err(NbdError::NoListener);
        }
        let unix = match &config.unix {
            Some(path) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(path);
                }
                Some(UnixListener::bind(path).map_err(|source| NbdError::Listen {
                    addr: path.display().to_string(),
                    source,
                })?)
            }
            None => None,
        };
        let tcp = match config.tcp {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| NbdError::Listen {
                            addr: addr.to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(NbdServer { config, unix, tcp })
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves `export` until the future is dropped (or its task aborted): then it
    /// stops accepting and closes every open connection once the requests already
    /// running have been answered, so clients see a clean end rather than errors
    /// from an export that is no longer theirs (a demoted mirror, say).
    pub async fn run<E: Export>(self, export: Arc<E>) {
        let info = Arc::new(ExportInfo {
            name: self.config.name.clone(),
            description: self.config.description.clone(),
            size: export.size(),
            read_only: export.read_only(),
        });
        let span = info_span!("nbd_export", name = %info.name, size = info.size);
        info!(parent: &span, unix = ?self.config.unix, tcp = ?self.tcp_addr(), "serving");
        // Dropped with this future; every connection ends when it sees the drop.
        let (_open, open_rx) = tokio::sync::watch::channel(());
        let shared = Shared {
            export,
            info,
            pool: Arc::new(BufferPool::default()),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            metrics: self.config.metrics.clone(),
            open: open_rx,
        };
        let unix = accept_unix(self.unix, shared.clone());
        let tcp = accept_tcp(self.tcp, shared);
        futures::future::join(unix, tcp).instrument(span).await;
    }
}

/// What every connection of one server shares.
struct Shared<E> {
    export: Arc<E>,
    info: Arc<ExportInfo>,
    pool: Arc<BufferPool>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    metrics: Option<Arc<NbdMetrics>>,
    /// Closed when the server stops.
    open: tokio::sync::watch::Receiver<()>,
}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Shared {
            export: Arc::clone(&self.export),
            info: Arc::clone(&self.info),
            pool: Arc::clone(&self.pool),
            connections: Arc::clone(&self.connections),
            metrics: self.metrics.clone(),
            open: self.open.clone(),
        }
    }
}

impl<E: Export> Shared<E> {
    /// Starts serving an accepted connection, or refuses it when too many are open.
    fn spawn<R, W>(&self, r: R, w: W, span: tracing::Span)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            warn!(parent: &span, "refused: {MAX_CONNECTIONS} connections already open");
            return;
        };
        let conn = connection(self.clone(), r, w);
        let mut open = self.open.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = conn => {}
                    _ = async { while open.changed().await.is_ok() {} } => {
                        info!("the export stopped: closing the connection");
                    }
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Accept errors (out of file descriptors, say) are logged and retried after a pause.
async fn accept_failed(e: std::io::Error) {
    warn!("accept: {e}");
    tokio::time::sleep(ACCEPT_RETRY).await;
}

async fn accept_unix<E: Export>(listener: Option<UnixListener>, shared: Shared<E>) {
    let Some(listener) = listener else {
        return;
    };
    let mut id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                id += 1;
                let (r, w) = stream.into_split();
                shared.spawn(r, w, info_span!("nbd_conn", transport = "unix", id));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_tcp<E: Export>(listener: Option<TcpListener>, shared: Shared<E>) {
    let Some(listener) = listener else {
        return;
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, "TCP_NODELAY: {e}");
                }
                let (r, w) = stream.into_split();
                shared.spawn(r, w, info_span!("nbd_conn", transport = "tcp", %peer));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Runs one connection to its end and logs how it ended.
async fn connection<E, R, W>(shared: Shared<E>, r: R, w: W)
where
    E: Export,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    debug!("connected");
    let served = negotiate_and_serve(
        shared.export,
        &shared.info,
        shared.pool,
        shared.metrics,
        r,
        w,
    );
    match served.await {
        Ok(()) => debug!("disconnected"),
        Err(NbdError::Io(e)) if client_went_away(&e) => debug!("client went away: {e}"),
        Err(e) => warn!("connection closed: {e}"),
    }
}

/// I/O errors that mean the client hung up rather than that something is wrong.
fn client_went_away(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted
    )
}

async fn negotiate_and_serve<E, R, W>(
    export: Arc<E>,
    info: &ExportInfo,
    pool: Arc<BufferPool>,
    metrics: Option<Arc<NbdMetrics>>,
    r: R,
    w: W,
) -> Result<(), NbdError>
where
    E: Export,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
    w.write_all(&greeting()).await?;
    w.flush().await?;
    let mut flags = [0u8; 4];
    r.read_exact(&mut flags).await?;
    let mut negotiation = Negotiation::new(info.clone(), decode_client_flags(flags)?);
    let mut out = Vec::new();
    let session = loop {
        let mut header = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut header).await?;
        let (option, len) = decode_option_header(&header)?;
        out.clear();
        let next = if len > MAX_OPTION_LEN {
            skip(&mut r, len).await?;
            negotiation.oversized(option, &mut out)
        } else {
            let mut data = vec![0u8; len as usize];
            r.read_exact(&mut data).await?;
            negotiation.handle(option, &data, &mut out)
        };
        w.write_all(&out).await?;
        w.flush().await?;
        match next {
            Next::Options => {}
            Next::Close => return Ok(()),
            Next::Transmission(s) => break s,
        }
    };
    debug!(?session, "transmission");
    transmission(export, session, pool, metrics, r, w).await
}

/// Reads a write payload into a pooled buffer, without zero-filling it first.
async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u32,
    pool: &Arc<BufferPool>,
) -> Result<Payload, NbdError> {
    let len = len as usize;
    let mut payload = Payload {
        data: pool.take(len),
        pool: Arc::clone(pool),
    };
    let data = &mut payload.data;
    while data.len() < len {
        let left = (len - data.len()) as u64;
        if (&mut *r).take(left).read_buf(data).await? == 0 {
            return Err(NbdError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(payload)
}

/// Reads and discards `len` bytes without buffering them.
async fn skip<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<(), NbdError> {
    let copied = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(NbdError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// The outcome of one request, queued for the writer.
struct Reply {
    cookie: u64,
    body: ReplyBody,
    /// Returned to the connection's budget once the reply is written.
    _budget: OwnedSemaphorePermit,
}

enum ReplyBody {
    Done,
    Data { offset: u64, data: Vec<u8> },
    Extents(Vec<Extent>),
    Error { errno: u32, message: String },
}

impl ReplyBody {
    fn error(errno: u32, message: impl Into<String>) -> ReplyBody {
        ReplyBody::Error {
            errno,
            message: message.into(),
        }
    }
}

impl From<ExportError> for ReplyBody {
    fn from(e: ExportError) -> ReplyBody {
        ReplyBody::error(e.errno(), e.to_string())
    }
}

/// The transmission phase: reads requests until the client is done, refusing those
/// that fail their checks and executing the rest concurrently within the connection's
/// in-flight budget; the reply writer sends the answers.
async fn transmission<E, R, W>(
    export: Arc<E>,
    session: Session,
    pool: Arc<BufferPool>,
    metrics: Option<Arc<NbdMetrics>>,
    mut r: BufReader<R>,
    w: BufWriter<W>,
) -> Result<(), NbdError>
where
    E: Export,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = SessionLimits {
        size: export.size(),
        read_only: export.read_only(),
        structured_replies: session.structured_replies,
        base_allocation: session.base_allocation,
    };
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(w, rx, session.structured_replies));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize));
    let mut header = [0u8; REQUEST_LEN];
    let ended = loop {
        let req = match next_request(&mut r, &mut header).await {
            Ok(Some(req)) => req,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let started = std::time::Instant::now();
        let payload_cost = match req.command {
            Command::Read | Command::Write => req.length.min(MAX_PAYLOAD),
            _ => 0,
        };
        let Ok(permit) = Arc::clone(&budget)
            .acquire_many_owned(payload_cost + REQUEST_COST)
            .await
        else {
            break Ok(());
        };
        let check = req.check(&limits);
        let payload = match take_payload(&mut r, &req, check, &pool).await {
            Ok(payload) => payload,
            Err(e) => break Err(e),
        };
        if let Err(errno) = check {
            if !refuse(&req, errno, permit, &tx, metrics.as_deref()) {
                break Ok(());
            }
            continue;
        }
        let reply = InFlight {
            tx: tx.clone(),
            permit,
            metrics: metrics.clone(),
            started,
        };
        tokio::spawn(reply.execute(Arc::clone(&export), req, payload));
    };
    // In-flight requests finish and are answered before the socket closes.
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    ended.and(written)
}

/// Reads and decodes the next request header; `None` once the client is done (it
/// closed the connection or asked to disconnect).
async fn next_request<R: AsyncRead + Unpin>(
    r: &mut R,
    header: &mut [u8; REQUEST_LEN],
) -> Result<Option<Request>, NbdError> {
    match r.read_exact(header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let req = decode_request(header)?;
    Ok((req.command != Command::Disconnect).then_some(req))
}

/// Reads a write's payload if the request passed its `check`, or skips it if not;
/// `None` for a refused write and for every other command.
async fn take_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    req: &Request,
    check: Result<(), u32>,
    pool: &Arc<BufferPool>,
) -> Result<Option<Payload>, NbdError> {
    match (req.command, check) {
        (Command::Write, Ok(())) => Ok(Some(read_payload(r, req.length, pool).await?)),
        (Command::Write, Err(_)) => {
            skip(r, req.length).await?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Queues the refusal of a request that failed its checks; `false` if the reply
/// writer is gone.
fn refuse(
    req: &Request,
    errno: u32,
    permit: OwnedSemaphorePermit,
    tx: &mpsc::UnboundedSender<Reply>,
    metrics: Option<&NbdMetrics>,
) -> bool {
    debug!(?req, errno, "refused");
    if let Some(m) = metrics {
        m.refused(req.command);
    }
    let body = ReplyBody::error(errno, refusal(req, errno));
    tx.send(Reply {
        cookie: req.cookie,
        body,
        _budget: permit,
    })
    .is_ok()
}

/// What an accepted request's reply needs: the writer's queue, the request's share of
/// the connection's budget, and the metrics with its start time.
struct InFlight {
    tx: mpsc::UnboundedSender<Reply>,
    permit: OwnedSemaphorePermit,
    metrics: Option<Arc<NbdMetrics>>,
    started: std::time::Instant,
}

impl InFlight {
    /// Executes `req`, records it in the metrics and queues its reply.
    async fn execute<E: Export>(self, export: Arc<E>, req: Request, payload: Option<Payload>) {
        let body = execute(&*export, req, payload).await;
        if let Some(m) = self.metrics {
            let ok = !matches!(body, ReplyBody::Error { .. });
            m.request(req.command, self.started.elapsed(), ok, req.length);
        }
        // The writer only goes away when the client did; nothing left to tell.
        let _ = self.tx.send(Reply {
            cookie: req.cookie,
            body,
            _budget: self.permit,
        });
    }
}

fn refusal(req: &Request, errno: u32) -> String {
    match errno {
        EPERM => "the export is read-only".into(),
        EOVERFLOW => format!("request of {} bytes exceeds {MAX_PAYLOAD}", req.length),
        _ => format!(
            "invalid {:?} at offset {} length {} flags {:#x}",
            req.command, req.offset, req.length, req.flags
        ),
    }
}

async fn execute<E: Export>(export: &E, req: Request, payload: Option<Payload>) -> ReplyBody {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let result = match req.command {
        // A zero-length read has no data chunk to send.
        Command::Read if req.length == 0 => Ok(ReplyBody::Done),
        Command::Read => export
            .read(req.offset, req.length)
            .await
            .map(|data| ReplyBody::Data {
                offset: req.offset,
                data,
            }),
        Command::Write => match payload {
            Some(payload) => export
                .write(req.offset, payload, fua)
                .await
                .map(|()| ReplyBody::Done),
            None => Err(ExportError::Invalid("write without a payload")),
        },
        Command::Flush => export.flush().await.map(|()| ReplyBody::Done),
        Command::Trim => {
            let trimmed = export.trim(req.offset, req.length).await;
            match trimmed {
                Ok(()) if fua => export.flush().await,
                other => other,
            }
            .map(|()| ReplyBody::Done)
        }
        Command::WriteZeroes => {
            let may_trim = req.flags & CMD_FLAG_NO_HOLE == 0;
            export
                .write_zeroes(req.offset, req.length, may_trim, fua)
                .await
                .map(|()| ReplyBody::Done)
        }
        Command::BlockStatus => {
            export
                .block_status(req.offset, req.length)
                .await
                .and_then(|mut extents| {
                    if extents.is_empty() {
                        return Err(ExportError::Invalid("empty block status"));
                    }
                    if req.flags & CMD_FLAG_REQ_ONE != 0 {
                        extents.truncate(1);
                    }
                    Ok(ReplyBody::Extents(extents))
                })
        }
        // Refused by `Request::check` before reaching here.
        Command::Disconnect | Command::Other(_) => Err(ExportError::Invalid("unsupported command")),
    };
    result.unwrap_or_else(ReplyBody::from)
}

/// Encodes replies as they come and flushes whenever no more are waiting.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    structured: bool,
) -> Result<(), NbdError> {
    let mut head = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next {
            head.clear();
            let data = encode_reply(&mut head, &reply, structured);
            w.write_all(&head).await?;
            if let Some(data) = data {
                w.write_all(data).await?;
            }
            drop(reply);
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    w.flush().await?;
    Ok(())
}

/// Appends a reply's header (and small payloads) to `head`; returns read data to send
/// after it.
fn encode_reply<'a>(head: &mut Vec<u8>, reply: &'a Reply, structured: bool) -> Option<&'a [u8]> {
    let cookie = reply.cookie;
    match (&reply.body, structured) {
        (ReplyBody::Done, false) => put_simple_reply(head, cookie, 0),
        (ReplyBody::Done, true) => {
            put_chunk_header(head, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
        }
        (ReplyBody::Data { data, .. }, false) => {
            put_simple_reply(head, cookie, 0);
            return Some(data);
        }
        (ReplyBody::Data { offset, data }, true) => {
            put_chunk_header(
                head,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + data.len() as u32,
            );
            head.extend_from_slice(&offset.to_be_bytes());
            return Some(data);
        }
        (ReplyBody::Extents(extents), true) => {
            put_chunk_header(
                head,
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                cookie,
                4 + 8 * extents.len() as u32,
            );
            head.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
            for e in extents {
                let flags =
                    if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
                head.extend_from_slice(&e.length.to_be_bytes());
                head.extend_from_slice(&flags.to_be_bytes());
            }
        }
        // Block status is refused without structured replies; answer EINVAL if it slips by.
        (ReplyBody::Extents(_), false) => put_simple_reply(head, cookie, EINVAL),
        (ReplyBody::Error { errno, .. }, false) => put_simple_reply(head, cookie, *errno),
        (ReplyBody::Error { errno, message }, true) => {
            put_error_chunk(head, cookie, *errno, message)
        }
    }
    None
}
