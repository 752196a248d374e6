//! The replication protocol's wire format: length-prefixed frames over TCP, a mutual
//! HMAC-SHA256 challenge with the cluster key before anything else, and optional
//! ChaCha20-Poly1305 encryption of every frame after it (for WAN links).
//!
//! # Frames
//! A plaintext frame is `u32 len` (big-endian, the byte count of what follows, at most
//! [`MAX_FRAME`]), a `u8` type, then the body. Every integer is big-endian. A string
//! is a `u8` byte count and UTF-8 (at most 255 bytes); a payload (`Vec<u8>`) is a
//! `u32` byte count (at most [`MAX_DATA`]) and the bytes. Types and bodies:
//!
//! | type | frame            | body                                                  |
//! |------|------------------|-------------------------------------------------------|
//! | 1    | `State`          | see below                                             |
//! | 2    | `Write`          | seq u64, epoch u64, offset u64, fua u8 (0/1), data    |
//! | 3    | `Trim`           | seq u64, epoch u64, offset u64, len u32               |
//! | 4    | `Zeroes`         | seq u64, epoch u64, offset u64, len u32               |
//! | 5    | `Flush`          | seq u64, epoch u64                                    |
//! | 6    | `Ack`            | seq u64                                               |
//! | 7    | `Nack`           | seq u64, errno u32                                    |
//! | 8    | `ResyncBegin`    | epoch u64, full u8 (0/1), total_bytes u64             |
//! | 9    | `ResyncData`     | epoch u64, offset u64, data                           |
//! | 10   | `ResyncZero`     | epoch u64, offset u64, len u32                        |
//! | 11   | `ResyncAck`      | offset u64, len u32                                   |
//! | 12   | `ResyncEnd`      | epoch u64, generation u64                             |
//! | 13   | `VerifyRequest`  | offset u64, len u32                                   |
//! | 14   | `VerifyDigests`  | offset u64, count u32 (≤ [`MAX_DIGESTS`]), 32 B each  |
//! | 15   | `Ping`           | nonce u64                                             |
//! | 16   | `Pong`           | nonce u64                                             |
//! | 17   | `Bye`            | reason string (cut to 255 bytes at a char boundary)   |
//! | 18   | `PeerAck`        | upto u64, holders: u8 count ≤ [`MAX_BITMAP_PEERS`] of string |
//! | 19   | `BitmapRuns`     | count u32 ≤ [`MAX_RUNS`] of (first block u64, blocks u32) |
//! | 20   | `BitmapEnd`      | dirty_blocks u64                                      |
//! | 21   | `WriteZstd`      | as `Write`; the data zstd-compressed (see below)      |
//! | 22   | `ResyncDataZstd` | as `ResyncData`; the data zstd-compressed             |
//!
//! Types 21 and 22 decode to [`Frame::Write`] and [`Frame::ResyncData`]; they are
//! valid only on a link that negotiated compression ([`compress`]: the length field
//! holds the decompressed length, and one zstd frame, smaller than that, fills the
//! rest of the body).
//!
//! `State` ([`CopyState`]): node string, mirror string, size_bytes u64, generations
//! (current u64; bitmap: u16 count ≤ [`MAX_BITMAP_PEERS`] of (peer string, u64) in
//! strictly ascending peer order; history: u8 count ≤ [`HISTORY_LEN`] of u64), disk u8
//! (0 up_to_date, 1 outdated, 2 inconsistent, 3 sync_source, 4 sync_target), primary u8
//! (0/1), changed_blocks u64, epoch u64, resolving u8 (0/1).
//!
//! # Reconciliation
//! Data frames carry the primary's operation number (`seq`, one numbering for all its
//! peers). `PeerAck` tells a secondary which copies durably hold every write up to
//! `upto` (`mirror::reconcile`). `BitmapRuns` and `BitmapEnd` carry a copy's dirty
//! bitmap toward the receiver as ascending, non-overlapping runs of 4 KiB blocks, so
//! the resync source can send the union of both sides' bitmaps (`mirror::connect`).
//!
//! # Ownership epochs
//! `epoch` is the group's ownership epoch ([`OwnershipEpoch`], committed by the quorum
//! log): in a primary's `State` and frames, the one it was promoted under; in a
//! secondary's (or a secondary resync source's), the highest it has followed. It is in
//! the `State` and in every frame that changes data or that the receiver acknowledges
//! (8 bytes each), not bound once to the session: a copy may be demoted and promoted
//! again under a new epoch while the link stays up, and a frame queued before that
//! must not pass as the new epoch's. A receiver refuses a primary's `State` of a lower
//! epoch than the highest it followed (`Bye` "stale ownership epoch N < M") and checks
//! each stamped frame again right before applying it, so frames already in flight from
//! a deposed primary are never applied; a primary that receives a `State` of a higher
//! epoch knows it was deposed and stops acknowledging writes (`replica::core::EpochGuard`).
//!
//! The encoding is canonical: a decoder refuses unknown types, enum codes and booleans
//! out of range, invalid UTF-8, counts over their limits, bytes missing inside a frame
//! and bytes left over at its end: every accepted frame re-encodes to the same bytes.
//! The length prefix is checked against the limit for its type before the body is
//! awaited or anything is allocated ([`WireError::TooLarge`]).
//!
//! # Handshake
//! Symmetric; both sides send, then read, each step ([`handshake`], at most
//! [`HANDSHAKE_TIMEOUT`] in all). The two messages are framed like frames (types
//! `0xF0`, `0xF1`, never valid after the handshake):
//! 1. Hello: magic `TNDMREPL`, version u16 (the sender's newest, [`MAX_VERSION`]),
//!    flags u8 (bit 0: wants encryption; bit 1: can zstd; bit 2: wants zstd; see
//!    [`compress`]), cluster, mirror, node (strings), a 32-byte nonce. Each side
//!    refuses a wrong magic (`Malformed`), another cluster or mirror (`WrongCluster`),
//!    a node other than the expected peer and a peer using its own node name
//!    (`WrongPeer`).
//! 2. Version: both sides take the lower of the two hellos' versions, and refuse
//!    (`Version`) if that is below their [`MIN_VERSION`]; so N and N + 1 interoperate.
//!    Builds that negotiate start their nonce with `TNDMv+` and their version again
//!    (u16), then 24 random bytes; a peer whose nonce says another version than its
//!    hello was rewritten in transit (`Downgrade`). Builds before version ranges send
//!    3, demand 3 and have random nonces: they interoperate with a build whose range
//!    includes 3.
//! 3. Auth: HMAC-SHA256 with the cluster key over the transcript
//!    `"tandem-mirror-auth-v1" ‖ negotiated version ‖ cluster ‖ mirror ‖ sender node ‖
//!    receiver node ‖ sender nonce ‖ receiver nonce ‖ sender flags ‖ receiver flags`
//!    (each field behind a u32 length prefix), checked in constant time. Direction and
//!    both fresh nonces are bound, so neither a replayed nor a reflected Auth passes;
//!    the flags are bound too, so neither encryption nor compression can be stripped in
//!    transit; the negotiated version, and through the nonces each side's newest, are
//!    bound, so a man in the middle cannot lower the version either.
//!
//! # Encryption
//! If either side asked for it, every later frame is sealed with ChaCha20-Poly1305: per
//! direction, key = HKDF-SHA256(ikm = cluster key, salt = the two nonces in ascending
//! order, info = `"tandem-mirror-v1 " ‖ sender node`), nonce = 4 zero bytes ‖ u64
//! counter (0, 1, ...; a fresh key per connection, so never reused). On the wire:
//! `u32 len` of ciphertext and tag, then the ciphertext of `type ‖ body`, then the
//! 16-byte tag. A frame failing its tag is [`WireError::Decrypt`].
//!
//! # Throughput
//! [`LinkWriter`] writes a plaintext payload straight from the caller's slice behind its
//! small header (one vectored write, no copy); [`LinkReader`] reads through a 256 KiB
//! buffer and reads payloads straight into the frame's `Vec`. The encrypted path copies
//! a payload once (to seal it in place). A compressed link compresses each payload
//! into a reused buffer and writes that instead (before sealing, when encrypted); an
//! uncompressed link pays one `Option` check for it.
//!
//! Fuzzed (`fuzz/fuzz_targets/mirror_frame.rs`).

use std::io::{self, IoSlice};
use std::time::Duration;

use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::mirror::generation::{DiskState, Generations, OwnershipEpoch, HISTORY_LEN};

pub mod compress;
#[cfg(test)]
mod tests;

use compress::{Compress, Packer, Unpacker};

/// The oldest protocol version this build speaks (3: peer-acks, bitmap exchange and
/// `resolving` in `State`; 2 added ownership epochs. An older peer is refused in the
/// handshake).
pub const MIN_VERSION: u16 = 3;
/// The newest protocol version this build speaks, sent in its hello. The `proto-next`
/// feature raises it by one, with the same frames, for the mixed-build lab test.
pub const MAX_VERSION: u16 = if cfg!(feature = "proto-next") { 4 } else { 3 };
/// How the nonce of a build that negotiates versions begins (then its version, u16).
const RANGE_MARK: &[u8; 6] = b"TNDMv+";
/// The most runs one `BitmapRuns` carries.
pub const MAX_RUNS: usize = 65_536;
/// The largest payload a frame may carry (a write or resync chunk): 1 MiB.
pub const MAX_DATA: usize = 1 << 20;
/// The most digests one `VerifyDigests` carries (32 MiB of 4 KiB blocks).
pub const MAX_DIGESTS: usize = 8192;
/// The most per-peer bitmap generations a `State` carries.
pub const MAX_BITMAP_PEERS: usize = 32;
/// The longest string on the wire, in bytes.
pub const MAX_STR: usize = 255;
/// The largest value of a plaintext frame's length prefix (type byte and body): a
/// `Write` with a full [`MAX_DATA`] payload. Encrypted frames add [`TAG_LEN`].
pub const MAX_FRAME: usize = 1 + WRITE_HEAD + MAX_DATA;
/// The Poly1305 tag at the end of every encrypted frame.
pub const TAG_LEN: usize = 16;
/// The whole handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first bytes of every hello.
pub const MAGIC: &[u8; 8] = b"TNDMREPL";

/// Hello flag: this side wants the link encrypted.
const FLAG_ENCRYPT: u8 = 1;
/// Hello flag: this side decodes zstd-compressed frames.
const FLAG_ZSTD_CAN: u8 = 2;
/// Hello flag: this side wants the link compressed with zstd.
const FLAG_ZSTD_WANT: u8 = 4;
/// The largest handshake message (a hello with three 255-byte names fits easily).
const HANDSHAKE_MAX: usize = 1024;
/// The reader's buffer.
const READ_BUF: usize = 256 * 1024;
/// Queued bytes past which [`LinkWriter::feed`] writes them out.
const WRITE_BUF: usize = 64 * 1024;
/// Payloads at least this big are written from the caller's slice, not copied.
const COPY_MAX: usize = 16 * 1024;

/// Write's fixed fields before the payload: seq, epoch, offset, fua, payload length.
const WRITE_HEAD: usize = 8 + 8 + 8 + 1 + 4;
/// ResyncData's fixed fields before the payload: epoch, offset, payload length.
const RESYNC_HEAD: usize = 8 + 8 + 4;
/// The largest `State` body.
const STATE_MAX: usize = 2 * (1 + MAX_STR)
    + 8
    + 8
    + 2
    + MAX_BITMAP_PEERS * (1 + MAX_STR + 8)
    + 1
    + HISTORY_LEN * 8
    + 1
    + 1
    + 8
    + 8
    + 1;

/// Frame type codes.
mod ty {
    pub const STATE: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const TRIM: u8 = 3;
    pub const ZEROES: u8 = 4;
    pub const FLUSH: u8 = 5;
    pub const ACK: u8 = 6;
    pub const NACK: u8 = 7;
    pub const RESYNC_BEGIN: u8 = 8;
    pub const RESYNC_DATA: u8 = 9;
    pub const RESYNC_ZERO: u8 = 10;
    pub const RESYNC_ACK: u8 = 11;
    pub const RESYNC_END: u8 = 12;
    pub const VERIFY_REQUEST: u8 = 13;
    pub const VERIFY_DIGESTS: u8 = 14;
    pub const PING: u8 = 15;
    pub const PONG: u8 = 16;
    pub const BYE: u8 = 17;
    pub const PEER_ACK: u8 = 18;
    pub const BITMAP_RUNS: u8 = 19;
    pub const BITMAP_END: u8 = 20;
    pub const WRITE_ZSTD: u8 = 21;
    pub const RESYNC_DATA_ZSTD: u8 = 22;
    /// Handshake messages (not frames).
    pub const HELLO: u8 = 0xF0;
    pub const AUTH: u8 = 0xF1;
}

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
    /// A primary's ownership epoch, or the highest a secondary has followed.
    pub epoch: OwnershipEpoch,
    /// The state shows a pending split-brain resolution (`connect::advertised`): a
    /// resync between two secondaries may then run.
    pub resolving: bool,
}

/// One frame after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The sender's copy (see [`CopyState`]).
    State(CopyState),
    /// A replicated client write; `seq` increases by one per replicated operation on
    /// this connection. With `fua`, the receiver makes it durable before acking.
    /// `epoch`: the sender's ownership epoch (see the module documentation).
    Write {
        seq: u64,
        epoch: OwnershipEpoch,
        offset: u64,
        fua: bool,
        data: Vec<u8>,
    },
    /// A replicated TRIM (no payload).
    Trim {
        seq: u64,
        epoch: OwnershipEpoch,
        offset: u64,
        len: u32,
    },
    /// A replicated WRITE_ZEROES (no payload).
    Zeroes {
        seq: u64,
        epoch: OwnershipEpoch,
        offset: u64,
        len: u32,
    },
    /// Make every earlier operation durable, then ack this seq.
    Flush {
        seq: u64,
        epoch: OwnershipEpoch,
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
        epoch: OwnershipEpoch,
        full: bool,
        total_bytes: u64,
    },
    /// Resync payload for `[offset, offset + data.len())`.
    ResyncData {
        epoch: OwnershipEpoch,
        offset: u64,
        data: Vec<u8>,
    },
    /// Resync: `[offset, offset + len)` reads as zeroes (a hole or written zeroes).
    ResyncZero {
        epoch: OwnershipEpoch,
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
        epoch: OwnershipEpoch,
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
    /// Primary to secondary: every write numbered up to `upto` is durable on each of
    /// `holders` (see `mirror::reconcile`).
    PeerAck {
        upto: u64,
        holders: Vec<String>,
    },
    /// Part of the sender's dirty bitmap toward the receiver: `(first block, blocks)`.
    BitmapRuns {
        runs: Vec<(u64, u32)>,
    },
    /// The sender's bitmap is complete; it holds `dirty_blocks` blocks.
    BitmapEnd {
        dirty_blocks: u64,
    },
}

impl Frame {
    /// The ownership epoch a frame that changes data is stamped with (`None` for the
    /// others: `State` carries its own in [`CopyState::epoch`]).
    pub fn epoch(&self) -> Option<OwnershipEpoch> {
        match self {
            Frame::Write { epoch, .. }
            | Frame::Trim { epoch, .. }
            | Frame::Zeroes { epoch, .. }
            | Frame::Flush { epoch, .. }
            | Frame::ResyncBegin { epoch, .. }
            | Frame::ResyncData { epoch, .. }
            | Frame::ResyncZero { epoch, .. }
            | Frame::ResyncEnd { epoch, .. } => Some(*epoch),
            Frame::State(_)
            | Frame::Ack { .. }
            | Frame::Nack { .. }
            | Frame::ResyncAck { .. }
            | Frame::VerifyRequest { .. }
            | Frame::VerifyDigests { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Bye { .. }
            | Frame::PeerAck { .. }
            | Frame::BitmapRuns { .. }
            | Frame::BitmapEnd { .. } => None,
        }
    }
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
    #[error(
        "peer speaks replication protocol versions up to {theirs}, this node \
         {MIN_VERSION}..={MAX_VERSION}"
    )]
    Version { theirs: u16 },
    #[error("the peer's hello says version {hello} but its nonce {nonce}: rewritten in transit")]
    Downgrade { hello: u16, nonce: u16 },
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
    /// Request compression; the link is compressed if both sides can and either
    /// requests it (see [`compress`]).
    pub compress: Compress,
}

/// The authenticated peer, as learned in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    pub node: String,
    /// The protocol version both sides speak on this link.
    pub version: u16,
    pub encrypted: bool,
    /// What the link compresses with, as negotiated.
    pub compress: Compress,
}

// ---------------------------------------------------------------------------------
// Encoding

/// The largest body (after the type byte) a frame of type `t` may have; `None` for an
/// unknown type.
fn max_body(t: u8) -> Option<usize> {
    Some(match t {
        ty::STATE => STATE_MAX,
        ty::WRITE => WRITE_HEAD + MAX_DATA,
        ty::TRIM | ty::ZEROES => 8 + 8 + 8 + 4,
        ty::ACK | ty::PING | ty::PONG => 8,
        ty::FLUSH | ty::RESYNC_END => 8 + 8,
        ty::NACK | ty::RESYNC_ACK | ty::VERIFY_REQUEST => 8 + 4,
        ty::RESYNC_ZERO => 8 + 8 + 4,
        ty::RESYNC_BEGIN => 8 + 1 + 8,
        ty::RESYNC_DATA => RESYNC_HEAD + MAX_DATA,
        ty::VERIFY_DIGESTS => 8 + 4 + MAX_DIGESTS * 32,
        ty::BYE => 1 + MAX_STR,
        ty::PEER_ACK => 8 + 1 + MAX_BITMAP_PEERS * (1 + MAX_STR),
        ty::BITMAP_RUNS => 4 + MAX_RUNS * 12,
        ty::BITMAP_END => 8,
        // Compressed only when smaller than the data.
        ty::WRITE_ZSTD => WRITE_HEAD + MAX_DATA - 1,
        ty::RESYNC_DATA_ZSTD => RESYNC_HEAD + MAX_DATA - 1,
        _ => return None,
    })
}

/// `s` cut to at most `max` bytes at a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A count that must fit its u32 field (callers keep to the limits; an oversized count
/// saturates and the peer refuses the frame).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = truncate_str(s, MAX_STR);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::UpToDate => 0,
        DiskState::Outdated => 1,
        DiskState::Inconsistent => 2,
        DiskState::SyncSource => 3,
        DiskState::SyncTarget => 4,
    }
}

fn disk_from(code: u8) -> Result<DiskState, WireError> {
    Ok(match code {
        0 => DiskState::UpToDate,
        1 => DiskState::Outdated,
        2 => DiskState::Inconsistent,
        3 => DiskState::SyncSource,
        4 => DiskState::SyncTarget,
        _ => return Err(WireError::Malformed("unknown disk state")),
    })
}

fn put_state(out: &mut Vec<u8>, s: &CopyState) {
    put_str(out, &s.node);
    put_str(out, &s.mirror);
    put_u64(out, s.size_bytes);
    let g = &s.generations;
    put_u64(out, g.current);
    let peers = g.bitmap.len().min(MAX_BITMAP_PEERS);
    put_u16(out, peers as u16);
    for (peer, generation) in g.bitmap.iter().take(peers) {
        put_str(out, peer);
        put_u64(out, *generation);
    }
    let history = g.history.len().min(HISTORY_LEN);
    out.push(history as u8);
    for generation in &g.history[..history] {
        put_u64(out, *generation);
    }
    out.push(disk_code(s.disk));
    out.push(u8::from(s.primary));
    put_u64(out, s.changed_blocks);
    put_u64(out, s.epoch.0);
    out.push(u8::from(s.resolving));
}

/// Appends the type byte and the body of `frame` to `out`, except a trailing payload
/// (Write, ResyncData), which it returns for the caller to append or write as is.
fn encode_body<'f>(frame: &'f Frame, out: &mut Vec<u8>) -> &'f [u8] {
    match frame {
        Frame::State(s) => {
            out.push(ty::STATE);
            put_state(out, s);
        }
        Frame::Write {
            seq,
            epoch,
            offset,
            fua,
            data,
        } => {
            out.push(ty::WRITE);
            put_u64(out, *seq);
            put_u64(out, epoch.0);
            put_u64(out, *offset);
            out.push(u8::from(*fua));
            put_u32(out, len32(data.len()));
            return data;
        }
        Frame::Trim {
            seq,
            epoch,
            offset,
            len,
        }
        | Frame::Zeroes {
            seq,
            epoch,
            offset,
            len,
        } => {
            out.push(if matches!(frame, Frame::Trim { .. }) {
                ty::TRIM
            } else {
                ty::ZEROES
            });
            put_u64(out, *seq);
            put_u64(out, epoch.0);
            put_u64(out, *offset);
            put_u32(out, *len);
        }
        Frame::Flush { seq, epoch } => {
            out.push(ty::FLUSH);
            put_u64(out, *seq);
            put_u64(out, epoch.0);
        }
        Frame::Ack { seq } => {
            out.push(ty::ACK);
            put_u64(out, *seq);
        }
        Frame::Nack { seq, errno } => {
            out.push(ty::NACK);
            put_u64(out, *seq);
            put_u32(out, *errno);
        }
        Frame::ResyncBegin {
            epoch,
            full,
            total_bytes,
        } => {
            out.push(ty::RESYNC_BEGIN);
            put_u64(out, epoch.0);
            out.push(u8::from(*full));
            put_u64(out, *total_bytes);
        }
        Frame::ResyncData {
            epoch,
            offset,
            data,
        } => {
            out.push(ty::RESYNC_DATA);
            put_u64(out, epoch.0);
            put_u64(out, *offset);
            put_u32(out, len32(data.len()));
            return data;
        }
        Frame::ResyncZero { epoch, offset, len } => {
            out.push(ty::RESYNC_ZERO);
            put_u64(out, epoch.0);
            put_u64(out, *offset);
            put_u32(out, *len);
        }
        Frame::ResyncAck { offset, len } => {
            out.push(ty::RESYNC_ACK);
            put_u64(out, *offset);
            put_u32(out, *len);
        }
        Frame::ResyncEnd { epoch, generation } => {
            out.push(ty::RESYNC_END);
            put_u64(out, epoch.0);
            put_u64(out, *generation);
        }
        Frame::VerifyRequest { offset, len } => {
            out.push(ty::VERIFY_REQUEST);
            put_u64(out, *offset);
            put_u32(out, *len);
        }
        Frame::VerifyDigests { offset, digests } => {
            out.push(ty::VERIFY_DIGESTS);
            put_u64(out, *offset);
            put_u32(out, len32(digests.len()));
            for d in digests {
                out.extend_from_slice(d);
            }
        }
        Frame::Ping { nonce } => {
            out.push(ty::PING);
            put_u64(out, *nonce);
        }
        Frame::Pong { nonce } => {
            out.push(ty::PONG);
            put_u64(out, *nonce);
        }
        Frame::Bye { reason } => {
            out.push(ty::BYE);
            put_str(out, reason);
        }
        Frame::PeerAck { upto, holders } => {
            out.push(ty::PEER_ACK);
            put_u64(out, *upto);
            let n = holders.len().min(MAX_BITMAP_PEERS);
            out.push(n as u8);
            for h in &holders[..n] {
                put_str(out, h);
            }
        }
        Frame::BitmapRuns { runs } => {
            out.push(ty::BITMAP_RUNS);
            put_u32(out, len32(runs.len()));
            for (first, blocks) in runs {
                put_u64(out, *first);
                put_u32(out, *blocks);
            }
        }
        Frame::BitmapEnd { dirty_blocks } => {
            out.push(ty::BITMAP_END);
            put_u64(out, *dirty_blocks);
        }
    }
    &[]
}

/// [`encode_body`], with `packed` (the compressed form of the frame's payload, if
/// any) in place of the payload: the type becomes its zstd twin.
fn encode_body_packed<'f>(
    frame: &'f Frame,
    packed: Option<&'f [u8]>,
    out: &mut Vec<u8>,
) -> &'f [u8] {
    let at = out.len();
    let payload = encode_body(frame, out);
    match packed {
        None => payload,
        Some(z) => {
            out[at] = if out[at] == ty::WRITE {
                ty::WRITE_ZSTD
            } else {
                ty::RESYNC_DATA_ZSTD
            };
            z
        }
    }
}

/// Appends the length prefix and everything but a trailing payload (see
/// [`encode_body_packed`]); the prefix counts the payload.
fn encode_head<'f>(frame: &'f Frame, packed: Option<&'f [u8]>, out: &mut Vec<u8>) -> &'f [u8] {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload = encode_body_packed(frame, packed, out);
    let len = len32(out.len() - start - 4 + payload.len());
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    payload
}

/// The payload of a `Write` or `ResyncData` (what a compressed link compresses).
fn payload_of(frame: &Frame) -> Option<&[u8]> {
    match frame {
        Frame::Write { data, .. } | Frame::ResyncData { data, .. } => Some(data),
        _ => None,
    }
}

/// Appends the plaintext encoding of `frame` (length prefix included) to `out`.
///
/// Infallible, so it cannot refuse what the wire cannot carry: strings are cut to 255
/// bytes, a bitmap to [`MAX_BITMAP_PEERS`] entries and a history to [`HISTORY_LEN`];
/// a payload over [`MAX_DATA`] or more than [`MAX_DIGESTS`] digests yield a frame every
/// decoder refuses. [`LinkWriter::send`] checks all of these first.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let payload = encode_head(frame, None, out);
    out.extend_from_slice(payload);
}

/// [`encode`] as a compressed link sends it: a payload whose zstd form is smaller
/// goes as a `WriteZstd`/`ResyncDataZstd` frame (see [`compress`]).
pub fn encode_compressed(frame: &Frame, packer: &mut Packer, out: &mut Vec<u8>) {
    let packed = payload_of(frame).and_then(|d| packer.pack(d));
    let payload = encode_head(frame, packed, out);
    out.extend_from_slice(payload);
}

/// Refuses a frame the wire cannot carry faithfully (see [`encode`]).
fn check_sendable(frame: &Frame) -> Result<(), WireError> {
    let name_ok = |s: &str| s.len() <= MAX_STR;
    match frame {
        Frame::Write { data, .. } | Frame::ResyncData { data, .. } if data.len() > MAX_DATA => {
            Err(WireError::TooLarge(data.len()))
        }
        Frame::VerifyDigests { digests, .. } if digests.len() > MAX_DIGESTS => {
            Err(WireError::TooLarge(digests.len() * 32))
        }
        Frame::BitmapRuns { runs } if runs.len() > MAX_RUNS => {
            Err(WireError::TooLarge(runs.len() * 12))
        }
        Frame::PeerAck { holders, .. } => {
            if holders.len() > MAX_BITMAP_PEERS || !holders.iter().all(|h| name_ok(h)) {
                Err(WireError::Malformed("peer-ack holders over the limits"))
            } else {
                Ok(())
            }
        }
        Frame::State(s) => {
            let g = &s.generations;
            if !name_ok(&s.node) || !name_ok(&s.mirror) || !g.bitmap.keys().all(|k| name_ok(k)) {
                Err(WireError::Malformed("name over 255 bytes"))
            } else if g.bitmap.len() > MAX_BITMAP_PEERS {
                Err(WireError::Malformed("too many bitmap generations"))
            } else if g.history.len() > HISTORY_LEN {
                Err(WireError::Malformed("generation history too long"))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// Decoding

/// A cursor over one frame's body; running out is malformed (the frame is complete).
struct Cur<'a> {
    buf: &'a [u8],
}

impl<'a> Cur<'a> {
    fn new(buf: &'a [u8]) -> Cur<'a> {
        Cur { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed("frame body too short"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn epoch(&mut self) -> Result<OwnershipEpoch, WireError> {
        Ok(OwnershipEpoch(self.u64()?))
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("boolean is neither 0 nor 1")),
        }
    }

    fn string(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Malformed("string is not UTF-8"))
    }

    /// A payload length, checked against [`MAX_DATA`].
    fn data_len(&mut self) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > MAX_DATA {
            return Err(WireError::TooLarge(n));
        }
        Ok(n)
    }

    /// Everything left in the frame.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes in frame"))
        }
    }
}

/// The fixed fields of a frame with a trailing payload.
enum DataHead {
    Write {
        seq: u64,
        epoch: OwnershipEpoch,
        offset: u64,
        fua: bool,
    },
    Resync {
        epoch: OwnershipEpoch,
        offset: u64,
    },
}

impl DataHead {
    /// How many bytes the fixed fields of type `t` take, if `t` carries a payload.
    fn len(t: u8) -> Option<usize> {
        match t {
            ty::WRITE => Some(WRITE_HEAD),
            ty::RESYNC_DATA => Some(RESYNC_HEAD),
            _ => None,
        }
    }

    /// Parses the fixed fields of type `t` (which must carry a payload, plain or
    /// compressed) and returns them with the payload's checked (decompressed) length.
    fn parse(t: u8, cur: &mut Cur<'_>) -> Result<(DataHead, usize), WireError> {
        let head = if t == ty::WRITE || t == ty::WRITE_ZSTD {
            DataHead::Write {
                seq: cur.u64()?,
                epoch: cur.epoch()?,
                offset: cur.u64()?,
                fua: cur.bool()?,
            }
        } else {
            DataHead::Resync {
                epoch: cur.epoch()?,
                offset: cur.u64()?,
            }
        };
        Ok((head, cur.data_len()?))
    }

    fn frame(self, data: Vec<u8>) -> Frame {
        match self {
            DataHead::Write {
                seq,
                epoch,
                offset,
                fua,
            } => Frame::Write {
                seq,
                epoch,
                offset,
                fua,
                data,
            },
            DataHead::Resync { epoch, offset } => Frame::ResyncData {
                epoch,
                offset,
                data,
            },
        }
    }
}

fn decode_state(cur: &mut Cur<'_>) -> Result<CopyState, WireError> {
    let node = cur.string()?;
    let mirror = cur.string()?;
    let size_bytes = cur.u64()?;
    let mut generations = Generations::new();
    generations.current = cur.u64()?;
    let peers = usize::from(cur.u16()?);
    if peers > MAX_BITMAP_PEERS {
        return Err(WireError::Malformed("too many bitmap generations"));
    }
    for _ in 0..peers {
        let peer = cur.string()?;
        let generation = cur.u64()?;
        // Strictly ascending, as a BTreeMap encodes: no duplicates, one encoding.
        if generations
            .bitmap
            .last_key_value()
            .is_some_and(|(last, _)| *last >= peer)
        {
            return Err(WireError::Malformed("bitmap peers out of order"));
        }
        generations.bitmap.insert(peer, generation);
    }
    let history = usize::from(cur.u8()?);
    if history > HISTORY_LEN {
        return Err(WireError::Malformed("generation history too long"));
    }
    for _ in 0..history {
        generations.history.push(cur.u64()?);
    }
    Ok(CopyState {
        node,
        mirror,
        size_bytes,
        generations,
        disk: disk_from(cur.u8()?)?,
        primary: cur.bool()?,
        changed_blocks: cur.u64()?,
        epoch: cur.epoch()?,
        resolving: cur.bool()?,
    })
}

/// A `PeerAck` body: holders strictly ascending (one encoding).
fn decode_peer_ack(c: &mut Cur<'_>) -> Result<Frame, WireError> {
    let upto = c.u64()?;
    let n = usize::from(c.u8()?);
    if n > MAX_BITMAP_PEERS {
        return Err(WireError::Malformed("too many peer-ack holders"));
    }
    let mut holders: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        let h = c.string()?;
        if holders.last().is_some_and(|last| *last >= h) {
            return Err(WireError::Malformed("peer-ack holders out of order"));
        }
        holders.push(h);
    }
    Ok(Frame::PeerAck { upto, holders })
}

/// A `BitmapRuns` body: non-empty runs, ascending and apart.
fn decode_bitmap_runs(c: &mut Cur<'_>) -> Result<Frame, WireError> {
    let n = c.u32()? as usize;
    if n > MAX_RUNS {
        return Err(WireError::TooLarge(n.saturating_mul(12)));
    }
    let mut runs: Vec<(u64, u32)> = Vec::with_capacity(n);
    for _ in 0..n {
        let (first, blocks) = (c.u64()?, c.u32()?);
        let after_last = runs
            .last()
            .map_or(Some(0), |(f, b)| f.checked_add(u64::from(*b) + 1));
        if blocks == 0 || after_last.is_none_or(|a| first < a) {
            return Err(WireError::Malformed(
                "bitmap runs empty, overlapping or out of order",
            ));
        }
        runs.push((first, blocks));
    }
    Ok(Frame::BitmapRuns { runs })
}

/// Decodes a complete frame from its type byte and body (length prefix stripped);
/// compressed frames only with an `unpack` (a link that negotiated compression).
fn decode_body(frame: &[u8], unpack: Option<&mut Unpacker>) -> Result<Frame, WireError> {
    let Some((&t, body)) = frame.split_first() else {
        return Err(WireError::Malformed("empty frame"));
    };
    let mut cur = Cur::new(body);
    let c = &mut cur;
    let f = match t {
        ty::STATE => Frame::State(decode_state(c)?),
        ty::WRITE | ty::RESYNC_DATA => {
            let (head, n) = DataHead::parse(t, c)?;
            head.frame(c.take(n)?.to_vec())
        }
        ty::WRITE_ZSTD | ty::RESYNC_DATA_ZSTD => {
            let unpack = unpack.ok_or(WireError::Malformed(
                "compressed frame on an uncompressed link",
            ))?;
            let (head, n) = DataHead::parse(t, c)?;
            head.frame(unpack.unpack(c.rest(), n)?)
        }
        ty::TRIM => Frame::Trim {
            seq: c.u64()?,
            epoch: c.epoch()?,
            offset: c.u64()?,
            len: c.u32()?,
        },
        ty::ZEROES => Frame::Zeroes {
            seq: c.u64()?,
            epoch: c.epoch()?,
            offset: c.u64()?,
            len: c.u32()?,
        },
        ty::FLUSH => Frame::Flush {
            seq: c.u64()?,
            epoch: c.epoch()?,
        },
        ty::ACK => Frame::Ack { seq: c.u64()? },
        ty::NACK => Frame::Nack {
            seq: c.u64()?,
            errno: c.u32()?,
        },
        ty::RESYNC_BEGIN => Frame::ResyncBegin {
            epoch: c.epoch()?,
            full: c.bool()?,
            total_bytes: c.u64()?,
        },
        ty::RESYNC_ZERO => Frame::ResyncZero {
            epoch: c.epoch()?,
            offset: c.u64()?,
            len: c.u32()?,
        },
        ty::RESYNC_ACK => Frame::ResyncAck {
            offset: c.u64()?,
            len: c.u32()?,
        },
        ty::RESYNC_END => Frame::ResyncEnd {
            epoch: c.epoch()?,
            generation: c.u64()?,
        },
        ty::VERIFY_REQUEST => Frame::VerifyRequest {
            offset: c.u64()?,
            len: c.u32()?,
        },
        ty::VERIFY_DIGESTS => {
            let offset = c.u64()?;
            let n = c.u32()? as usize;
            if n > MAX_DIGESTS {
                return Err(WireError::TooLarge(n.saturating_mul(32)));
            }
            let raw = c.take(n * 32)?;
            let digests = raw
                .chunks_exact(32)
                .map(|d| {
                    let mut a = [0; 32];
                    a.copy_from_slice(d);
                    a
                })
                .collect();
            Frame::VerifyDigests { offset, digests }
        }
        ty::PING => Frame::Ping { nonce: c.u64()? },
        ty::PONG => Frame::Pong { nonce: c.u64()? },
        ty::BYE => Frame::Bye {
            reason: c.string()?,
        },
        ty::PEER_ACK => decode_peer_ack(c)?,
        ty::BITMAP_RUNS => decode_bitmap_runs(c)?,
        ty::BITMAP_END => Frame::BitmapEnd {
            dirty_blocks: c.u64()?,
        },
        _ => return Err(WireError::Malformed("unknown frame type")),
    };
    cur.finish()?;
    Ok(f)
}

/// Like [`decode_body`], but a plain payload keeps `frame`'s allocation (no copy).
fn decode_owned(mut frame: Vec<u8>, unpack: Option<&mut Unpacker>) -> Result<Frame, WireError> {
    let Some(&t) = frame.first() else {
        return Err(WireError::Malformed("empty frame"));
    };
    check_len(frame.len(), Some(t))?;
    let Some(head_len) = DataHead::len(t) else {
        return decode_body(&frame, unpack);
    };
    let mut cur = Cur::new(&frame[1..]);
    let (head, n) = DataHead::parse(t, &mut cur)?;
    check_payload_len(frame.len() - 1 - head_len, n)?;
    frame.drain(..1 + head_len);
    Ok(head.frame(frame))
}

/// A frame's remaining body must be exactly its payload.
fn check_payload_len(rest: usize, payload: usize) -> Result<(), WireError> {
    match rest.cmp(&payload) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(WireError::Malformed("frame body too short")),
        std::cmp::Ordering::Greater => Err(WireError::Malformed("trailing bytes in frame")),
    }
}

/// Checks a plaintext length prefix, and once known the type byte, before any wait
/// or allocation.
fn check_len(len: usize, t: Option<u8>) -> Result<(), WireError> {
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    if let Some(t) = t {
        let max = max_body(t).ok_or(WireError::Malformed("unknown frame type"))?;
        if len - 1 > max {
            return Err(WireError::TooLarge(len));
        }
    }
    Ok(())
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed,
/// else the frame and how many bytes it used. Compressed frames are refused.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    decode_with(buf, None)
}

/// [`decode`] as a compressed link reads: compressed frames are decompressed
/// (bounded by [`MAX_DATA`]).
pub fn decode_compressed(
    buf: &[u8],
    unpack: &mut Unpacker,
) -> Result<Option<(Frame, usize)>, WireError> {
    decode_with(buf, Some(unpack))
}

fn decode_with(
    buf: &[u8],
    unpack: Option<&mut Unpacker>,
) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    check_len(len, buf.get(4).copied())?;
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(frame, unpack)?, 4 + len)))
}

// ---------------------------------------------------------------------------------
// Links

/// One direction's AEAD state.
struct Cipher {
    aead: ChaCha20Poly1305,
    counter: u64,
}

impl Cipher {
    /// The key for frames sent by `sender` on the connection with these nonces.
    fn derive(
        cluster_key: &[u8],
        nonces: (&[u8; 32], &[u8; 32]),
        sender: &str,
    ) -> Result<Cipher, WireError> {
        let (a, b) = if nonces.0 <= nonces.1 {
            (nonces.0, nonces.1)
        } else {
            (nonces.1, nonces.0)
        };
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(a);
        salt[32..].copy_from_slice(b);
        let hk = Hkdf::<Sha256>::new(Some(&salt), cluster_key);
        let mut info = b"tandem-mirror-v1 ".to_vec();
        info.extend_from_slice(sender.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(&info, &mut okm)
            .map_err(|_| WireError::Malformed("key derivation failed"))?;
        Ok(Cipher {
            aead: ChaCha20Poly1305::new(Key::from_slice(&okm)),
            counter: 0,
        })
    }

    fn next_nonce(&mut self) -> Result<Nonce, WireError> {
        let n = self.counter;
        self.counter = n
            .checked_add(1)
            .ok_or(WireError::Malformed("frame counter exhausted"))?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Ok(*Nonce::from_slice(&nonce))
    }
}

/// Writes `a` then `b` with vectored writes (one system call for a header and its
/// payload when the writer supports it).
async fn write_two<W: AsyncWrite + Unpin>(w: &mut W, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    w.write_all(b).await
}

/// The sending half of an authenticated link.
///
/// Not cancel-safe: dropping a `send` future midway leaves a partial frame behind, and
/// after any error the link must be dropped.
pub struct LinkWriter<W> {
    w: W,
    /// Queued bytes: whole frames (sealed when encrypted), or a plaintext header.
    buf: Vec<u8>,
    seal: Option<Cipher>,
    /// On a compressed link.
    pack: Option<Packer>,
}

impl<W: AsyncWrite + Unpin + Send> LinkWriter<W> {
    fn new(w: W, seal: Option<Cipher>, pack: Option<Packer>) -> LinkWriter<W> {
        LinkWriter {
            w,
            buf: Vec::with_capacity(WRITE_BUF + COPY_MAX),
            seal,
            pack,
        }
    }

    /// On a compressed link, counts payload bytes before and after compression into
    /// `counters` from now on (no effect on an uncompressed link).
    pub fn count_compression(&mut self, counters: std::sync::Arc<compress::CompressCounters>) {
        if let Some(p) = &mut self.pack {
            p.count_into(counters);
        }
    }

    /// What the link compresses with.
    pub fn compress(&self) -> Compress {
        if self.pack.is_some() {
            Compress::Zstd
        } else {
            Compress::None
        }
    }

    /// Encodes (and encrypts) `frame` and writes it out (flushed).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Like [`send`](Self::send) without the flush: small frames queue in memory (up to
    /// 64 KiB) so a burst of them goes out in one write. Call [`flush`](Self::flush)
    /// when no more frames follow for now.
    pub async fn feed(&mut self, frame: &Frame) -> Result<(), WireError> {
        check_sendable(frame)?;
        let packed = match &mut self.pack {
            None => None,
            Some(p) => payload_of(frame).and_then(|d| p.pack(d)),
        };
        match &mut self.seal {
            None => {
                let payload = encode_head(frame, packed, &mut self.buf);
                if payload.len() >= COPY_MAX {
                    write_two(&mut self.w, &self.buf, payload).await?;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(payload);
                }
            }
            Some(cipher) => {
                let start = self.buf.len();
                self.buf.extend_from_slice(&[0; 4]);
                let payload = encode_body_packed(frame, packed, &mut self.buf);
                self.buf.extend_from_slice(payload);
                let nonce = cipher.next_nonce()?;
                let tag = cipher
                    .aead
                    .encrypt_in_place_detached(&nonce, b"", &mut self.buf[start + 4..])
                    .map_err(|_| WireError::Malformed("frame too big to encrypt"))?;
                self.buf.extend_from_slice(&tag);
                let len = len32(self.buf.len() - start - 4);
                self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        if self.buf.len() >= WRITE_BUF {
            self.w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes out queued frames and flushes the underlying writer.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            self.w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.w.flush().await?;
        Ok(())
    }

    /// Whether frames are sealed with ChaCha20-Poly1305.
    pub fn encrypted(&self) -> bool {
        self.seal.is_some()
    }
}

/// The receiving half of an authenticated link.
///
/// Not cancel-safe: a `recv` dropped midway (say, losing a `select!`) loses its frame
/// and the stream's framing; keep one `recv` future alive, or drop the link after.
pub struct LinkReader<R> {
    r: BufReader<R>,
    open: Option<Cipher>,
    /// On a compressed link.
    unpack: Option<Unpacker>,
    /// Reused for frames without a plain payload.
    scratch: Vec<u8>,
}

impl<R: AsyncRead + Unpin + Send> LinkReader<R> {
    /// The next frame; `WireError::Closed` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Frame, WireError> {
        let len = read_prefix(&mut self.r).await?;
        match &mut self.open {
            None => self.recv_plain(len).await,
            Some(cipher) => {
                if len > MAX_FRAME + TAG_LEN {
                    return Err(WireError::TooLarge(len));
                }
                if len <= TAG_LEN {
                    return Err(WireError::Malformed("encrypted frame too short"));
                }
                let mut frame = vec![0u8; len];
                self.r.read_exact(&mut frame).await?;
                let split = len - TAG_LEN;
                let tag = Tag::clone_from_slice(&frame[split..]);
                let nonce = cipher.next_nonce()?;
                cipher
                    .aead
                    .decrypt_in_place_detached(&nonce, b"", &mut frame[..split], &tag)
                    .map_err(|_| WireError::Decrypt)?;
                frame.truncate(split);
                decode_owned(frame, self.unpack.as_mut())
            }
        }
    }

    async fn recv_plain(&mut self, len: usize) -> Result<Frame, WireError> {
        check_len(len, None)?;
        let t = self.r.read_u8().await?;
        check_len(len, Some(t))?;
        if let Some(head_len) = DataHead::len(t) {
            // Read the payload straight into the frame's Vec.
            if len - 1 < head_len {
                return Err(WireError::Malformed("frame body too short"));
            }
            let mut raw = [0u8; WRITE_HEAD];
            let raw = &mut raw[..head_len];
            self.r.read_exact(raw).await?;
            let (head, n) = DataHead::parse(t, &mut Cur::new(raw))?;
            check_payload_len(len - 1 - head_len, n)?;
            let mut data = vec![0u8; n];
            self.r.read_exact(&mut data).await?;
            return Ok(head.frame(data));
        }
        self.scratch.clear();
        self.scratch.resize(len, 0);
        self.scratch[0] = t;
        self.r.read_exact(&mut self.scratch[1..]).await?;
        decode_body(&self.scratch, self.unpack.as_mut())
    }

    /// Whether frames are sealed with ChaCha20-Poly1305.
    pub fn encrypted(&self) -> bool {
        self.open.is_some()
    }
}

/// Reads a length prefix: `Closed` at a clean end of stream.
async fn read_prefix<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<usize, WireError> {
    if r.fill_buf().await?.is_empty() {
        return Err(WireError::Closed);
    }
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await?;
    Ok(u32::from_be_bytes(prefix) as usize)
}

// ---------------------------------------------------------------------------------
// Handshake

/// A decoded hello.
struct Hello {
    /// The sender's newest protocol version.
    version: u16,
    flags: u8,
    cluster: String,
    mirror: String,
    node: String,
    nonce: [u8; 32],
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0; 4]);
        out.push(ty::HELLO);
        out.extend_from_slice(MAGIC);
        put_u16(&mut out, self.version);
        out.push(self.flags);
        put_str(&mut out, &self.cluster);
        put_str(&mut out, &self.mirror);
        put_str(&mut out, &self.node);
        out.extend_from_slice(&self.nonce);
        let len = len32(out.len() - 4);
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    fn decode(body: &[u8]) -> Result<Hello, WireError> {
        let mut c = Cur::new(body);
        if c.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
            return Err(WireError::Malformed(
                "not a Tandem replication peer (bad magic)",
            ));
        }
        let hello = Hello {
            version: c.u16()?,
            flags: c.u8()?,
            cluster: c.string()?,
            mirror: c.string()?,
            node: c.string()?,
            nonce: c.array()?,
        };
        c.finish()?;
        Ok(hello)
    }
}

/// A fresh hello nonce: [`RANGE_MARK`], this build's newest version, 24 random bytes.
fn fresh_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce[..RANGE_MARK.len()].copy_from_slice(RANGE_MARK);
    nonce[RANGE_MARK.len()..RANGE_MARK.len() + 2].copy_from_slice(&MAX_VERSION.to_be_bytes());
    nonce
}

/// The version both sides speak with a peer that sent `theirs`: the lower of the two
/// newest, refused below [`MIN_VERSION`] or if its nonce (bound by the Auth MAC) says
/// another version than its hello (see the module documentation).
fn negotiate(theirs: &Hello) -> Result<u16, WireError> {
    let v = theirs.version.min(MAX_VERSION);
    if v < MIN_VERSION {
        return Err(WireError::Version {
            theirs: theirs.version,
        });
    }
    if let Some(rest) = theirs.nonce.strip_prefix(RANGE_MARK) {
        let nonce = u16::from_be_bytes([rest[0], rest[1]]);
        if nonce != theirs.version {
            return Err(WireError::Downgrade {
                hello: theirs.version,
                nonce,
            });
        }
    }
    Ok(v)
}

/// Writes one handshake message (already framed) and flushes.
async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> Result<(), WireError> {
    w.write_all(msg).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one handshake message of type `want`, returning its body.
async fn read_msg<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    want: u8,
) -> Result<Vec<u8>, WireError> {
    let len = read_prefix(r).await?;
    if len > HANDSHAKE_MAX {
        return Err(WireError::TooLarge(len));
    }
    if len == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    if msg[0] != want {
        return Err(WireError::Malformed("unexpected handshake message"));
    }
    msg.remove(0);
    Ok(msg)
}

/// The MAC a sender puts in its Auth: see the module documentation.
fn auth_mac(
    key: &[u8],
    cluster: &str,
    mirror: &str,
    version: u16,
    sender: &Hello,
    receiver: &Hello,
) -> Result<Hmac<Sha256>, WireError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| WireError::AuthFailed)?;
    let mut field = |bytes: &[u8]| {
        mac.update(&len32(bytes.len()).to_be_bytes());
        mac.update(bytes);
    };
    field(b"tandem-mirror-auth-v1");
    field(&version.to_be_bytes());
    field(cluster.as_bytes());
    field(mirror.as_bytes());
    field(sender.node.as_bytes());
    field(receiver.node.as_bytes());
    field(&sender.nonce);
    field(&receiver.nonce);
    field(&[sender.flags, receiver.flags]);
    Ok(mac)
}

/// Runs the mutual challenge on a fresh connection (either side may call it; the
/// protocol is symmetric). With `expected_peer`, a peer with another name is refused.
///
/// Times out after [`HANDSHAKE_TIMEOUT`] with an `Io(TimedOut)` error.
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
    handshake_within(HANDSHAKE_TIMEOUT, reader, writer, params, expected_peer).await
}

/// [`handshake`] with another time limit.
async fn handshake_within<R, W>(
    limit: Duration,
    reader: R,
    writer: W,
    params: &HandshakeParams,
    expected_peer: Option<&str>,
) -> Result<(LinkReader<R>, LinkWriter<W>, PeerHello), WireError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    match tokio::time::timeout(limit, run_handshake(reader, writer, params, expected_peer)).await {
        Ok(done) => done,
        Err(_) => Err(WireError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "replication handshake timed out",
        ))),
    }
}

async fn run_handshake<R, W>(
    reader: R,
    mut w: W,
    params: &HandshakeParams,
    expected_peer: Option<&str>,
) -> Result<(LinkReader<R>, LinkWriter<W>, PeerHello), WireError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    for name in [&params.cluster, &params.mirror, &params.local_node] {
        if name.is_empty() || name.len() > MAX_STR {
            return Err(WireError::Malformed(
                "cluster, mirror and node names must have 1 to 255 bytes",
            ));
        }
    }
    let mut r = BufReader::with_capacity(READ_BUF, reader);

    // 1. Hellos.
    let ours = Hello {
        version: MAX_VERSION,
        flags: hello_flags(params),
        cluster: params.cluster.clone(),
        mirror: params.mirror.clone(),
        node: params.local_node.clone(),
        nonce: fresh_nonce(),
    };
    // Send and receive at once: neither side waits for the other to read first.
    let hello = ours.encode();
    let (_, body) = tokio::try_join!(write_msg(&mut w, &hello), read_msg(&mut r, ty::HELLO))?;
    let theirs = Hello::decode(&body)?;

    // 2. Who is it?
    if theirs.cluster != params.cluster || theirs.mirror != params.mirror {
        return Err(WireError::WrongCluster(theirs.cluster, theirs.mirror));
    }
    if let Some(expected) = expected_peer {
        if theirs.node != expected {
            return Err(WireError::WrongPeer {
                expected: expected.to_string(),
                got: theirs.node,
            });
        }
    }
    if theirs.node == params.local_node || theirs.nonce == ours.nonce {
        // Our own hello reflected (or a misconfigured twin).
        return Err(WireError::WrongPeer {
            expected: format!("a node other than {}", params.local_node),
            got: theirs.node,
        });
    }

    // 3. The version, then mutual proof of the cluster key.
    let version = negotiate(&theirs)?;
    let mine = auth_mac(
        &params.key,
        &params.cluster,
        &params.mirror,
        version,
        &ours,
        &theirs,
    )?
    .finalize()
    .into_bytes();
    let mut auth = Vec::with_capacity(4 + 1 + mine.len());
    put_u32(&mut auth, len32(1 + mine.len()));
    auth.push(ty::AUTH);
    auth.extend_from_slice(&mine);
    let (_, their_mac) = tokio::try_join!(write_msg(&mut w, &auth), read_msg(&mut r, ty::AUTH))?;
    auth_mac(
        &params.key,
        &params.cluster,
        &params.mirror,
        version,
        &theirs,
        &ours,
    )?
    .verify_slice(&their_mac)
    .map_err(|_| WireError::AuthFailed)?;

    open_link(r, w, &params.key, (&ours, theirs), version)
}

/// The flags of this side's hello.
fn hello_flags(params: &HandshakeParams) -> u8 {
    let mut flags = FLAG_ZSTD_CAN;
    if params.encrypt {
        flags |= FLAG_ENCRYPT;
    }
    if params.compress == Compress::Zstd {
        flags |= FLAG_ZSTD_WANT;
    }
    flags
}

/// The link's compression: zstd if both sides can and at least one wants it.
fn negotiate_compress(ours: u8, theirs: u8) -> Compress {
    let both_can = ours & theirs & FLAG_ZSTD_CAN != 0;
    let wanted = (ours | theirs) & FLAG_ZSTD_WANT != 0;
    if both_can && wanted {
        Compress::Zstd
    } else {
        Compress::None
    }
}

/// The two halves of an authenticated link, as the hellos negotiated them:
/// encrypted if either side asked, compressed per [`negotiate_compress`].
fn open_link<R, W>(
    r: BufReader<R>,
    w: W,
    key: &[u8],
    (ours, theirs): (&Hello, Hello),
    version: u16,
) -> Result<(LinkReader<R>, LinkWriter<W>, PeerHello), WireError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let encrypted = (ours.flags | theirs.flags) & FLAG_ENCRYPT != 0;
    let (seal, open) = if encrypted {
        let nonces = (&ours.nonce, &theirs.nonce);
        (
            Some(Cipher::derive(key, nonces, &ours.node)?),
            Some(Cipher::derive(key, nonces, &theirs.node)?),
        )
    } else {
        (None, None)
    };
    let compress = negotiate_compress(ours.flags, theirs.flags);
    let (pack, unpack) = match compress {
        Compress::Zstd => (Some(Packer::new()?), Some(Unpacker::new()?)),
        Compress::None => (None, None),
    };
    let reader = LinkReader {
        r,
        open,
        unpack,
        scratch: Vec::new(),
    };
    let peer = PeerHello {
        node: theirs.node,
        version,
        encrypted,
        compress,
    };
    Ok((reader, LinkWriter::new(w, seal, pack), peer))
}
