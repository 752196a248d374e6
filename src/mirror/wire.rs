//! The replication protocol's wire format: length-prefixed frames over TCP, a mutual
//! HMAC-SHA256 challenge with the cluster key before anything else, and optional
//! ChaCha20-Poly1305 encryption of every frame after it (for WAN links).
//!
//! INTERFACE SKELETON: the types below are fixed; the bodies are filled in by the wire
//! codec work. Fuzzed (`fuzz/fuzz_targets/mirror_frame.rs`).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::mirror::generation::{DiskState, Generations};

/// Protocol version carried in the hello.
pub const VERSION: u16 = 1;
/// The largest payload a frame may carry (a write or resync chunk): 1 MiB.
pub const MAX_DATA: usize = 1 << 20;

/// A peer's description of its copy, sent by both sides right after authentication
/// and again whenever its disk state or role changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    pub node: String,
    pub mirror: String,
    pub size_bytes: u64,
    pub generations: Generations,
    pub disk: DiskState,
    pub primary: bool,
    /// Blocks this side changed since the generation it shares with the receiver
    /// (its bitmap for the receiver plus crash-dirty activity-log blocks).
    pub changed_blocks: u64,
}

/// One frame after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The sender's copy (see [`CopyState`]).
    State(CopyState),
    /// A replicated client write; `seq` increases by one per replicated operation on
    /// this connection. With `fua`, the receiver makes it durable before acking.
    Write {
        seq: u64,
        offset: u64,
        fua: bool,
        data: Vec<u8>,
    },
    /// A replicated TRIM (no payload).
    Trim {
        seq: u64,
        offset: u64,
        len: u32,
    },
    /// A replicated WRITE_ZEROES (no payload).
    Zeroes {
        seq: u64,
        offset: u64,
        len: u32,
    },
    /// Make every earlier operation durable, then ack this seq.
    Flush {
        seq: u64,
    },
    /// Every operation up to and including `seq` is applied (and, for FUA writes and
    /// flushes among them, durable).
    Ack {
        seq: u64,
    },
    /// Operation `seq` failed on the receiver with this NBD errno; the link drops after.
    Nack {
        seq: u64,
        errno: u32,
    },
    /// The source starts a resync of `total_bytes` (full: every block).
    ResyncBegin {
        full: bool,
        total_bytes: u64,
    },
    /// Resync payload for `[offset, offset + data.len())`.
    ResyncData {
        offset: u64,
        data: Vec<u8>,
    },
    /// Resync: `[offset, offset + len)` reads as zeroes (a hole or written zeroes).
    ResyncZero {
        offset: u64,
        len: u32,
    },
    /// The target applied resync frames up to `offset + len` (flow control, progress).
    ResyncAck {
        offset: u64,
        len: u32,
    },
    /// The resync is complete; the target adopts `generation` and becomes UpToDate.
    ResyncEnd {
        generation: u64,
    },
    /// Online verify: the target answers with SHA-256 digests of each 4 KiB block of
    /// `[offset, offset + len)`.
    VerifyRequest {
        offset: u64,
        len: u32,
    },
    /// One digest per 4 KiB block, starting at `offset`; a hole hashes as zeroes.
    VerifyDigests {
        offset: u64,
        digests: Vec<[u8; 32]>,
    },
    /// Keepalive and its answer (RTT).
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The sender closes the link on purpose (disconnect, demote, shutdown).
    Bye {
        reason: String,
    },
}

/// What can go wrong on a replication link.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("peer failed authentication (wrong cluster key?)")]
    AuthFailed,
    #[error("peer speaks protocol version {0}, this node {VERSION}")]
    Version(u16),
    #[error("peer is {got:?}, expected {expected:?}")]
    WrongPeer { expected: String, got: String },
    #[error("peer is in cluster {0:?} / mirror {1:?}, not ours")]
    WrongCluster(String, String),
    #[error("frame failed decryption")]
    Decrypt,
    #[error("link closed by the peer")]
    Closed,
}

/// What both sides need for the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeParams {
    pub cluster: String,
    pub mirror: String,
    pub local_node: String,
    /// The cluster key (the heartbeat secret).
    pub key: Vec<u8>,
    /// Request encryption; the link is encrypted if either side requests it.
    pub encrypt: bool,
}

/// The authenticated peer, as learned in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    pub node: String,
    pub encrypted: bool,
}

/// Appends the plaintext encoding of `frame` (length prefix included) to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let _ = (frame, out);
    todo!("wire codec")
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed,
/// else the frame and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let _ = buf;
    todo!("wire codec")
}

/// The sending half of an authenticated link.
pub struct LinkWriter<W> {
    _w: W,
}

/// The receiving half of an authenticated link.
pub struct LinkReader<R> {
    _r: R,
}

impl<W: AsyncWrite + Unpin + Send> LinkWriter<W> {
    /// Encodes (and encrypts) `frame` and writes it out.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        let _ = frame;
        todo!("wire codec")
    }
}

impl<R: AsyncRead + Unpin + Send> LinkReader<R> {
    /// The next frame; `WireError::Closed` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Frame, WireError> {
        todo!("wire codec")
    }
}

/// Runs the mutual challenge on a fresh connection (either side may call it; the
/// protocol is symmetric). With `expected_peer`, a peer with another name is refused.
pub async fn handshake<R, W>(
    reader: R,
    writer: W,
    params: &HandshakeParams,
    expected_peer: Option<&str>,
) -> Result<(LinkReader<R>, LinkWriter<W>, PeerHello), WireError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let _ = (reader, writer, params, expected_peer);
    todo!("wire handshake")
}
