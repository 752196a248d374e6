//! Optional zstd compression of a replication link's bulk payloads (the data of
//! `Write` and `ResyncData` frames), per frame, with the `zstd` crate (libzstd).
//!
//! # Negotiation
//! Every hello of this build sets flag bit 1, "can zstd" (it decodes compressed
//! frames), and sets bit 2, "wants zstd", when its link is configured with
//! `compress = "zstd"`. A link is compressed when **both** hellos can and **at least
//! one** wants. A peer of an older build sets neither bit, so its link stays
//! uncompressed, without an error. The flags are bound into the Auth MAC, so a man in
//! the middle can neither strip nor force compression.
//!
//! # Frames
//! On a compressed link the sender compresses each payload on its own (no state
//! carried between frames, so a lost link loses nothing). If the compressed form is
//! smaller it sends the payload's compressed twin type, `WriteZstd` (21) or
//! `ResyncDataZstd` (22): the same fixed fields, with the length field holding the
//! **decompressed** length (at most [`MAX_DATA`]), then one zstd frame filling the
//! rest of the frame body (strictly shorter than the decompressed length). Otherwise
//! it sends the plain `Write`/`ResyncData` frame. Compression happens before
//! encryption; an encrypted link seals the compressed frame.
//!
//! # Bounds
//! [`Unpacker::unpack`] allocates exactly the stated length (at most [`MAX_DATA`])
//! and decompresses into it with libzstd's one-shot API, which never writes past the
//! buffer and keeps no window of its own: a frame that claims more than [`MAX_DATA`],
//! produces more or less than it claims, or is not valid zstd is
//! [`WireError::Malformed`] (or [`WireError::TooLarge`]), and the link drops.
//!
//! Fuzzed (`fuzz/fuzz_targets/mirror_frame_zstd.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{WireError, MAX_DATA};

/// The zstd level: libzstd's default, a good ratio at a few hundred MB/s per core.
pub const LEVEL: i32 = 3;

/// A link's compression setting (`compress` in `[[mirror.link]]`), and what a
/// handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    /// Payloads go as they are (unless the peer wants zstd; see the module docs).
    #[default]
    None,
    /// Payloads are zstd-compressed when that makes them smaller.
    Zstd,
}

impl Compress {
    /// The snake_case name (as in the config).
    pub fn name(self) -> &'static str {
        match self {
            Compress::None => "none",
            Compress::Zstd => "zstd",
        }
    }
}

/// Bytes of payload before and after compression on one peer's links, in the
/// direction this node sends (shared between the link writer and the status).
#[derive(Debug, Default)]
pub struct CompressCounters {
    raw: AtomicU64,
    wire: AtomicU64,
}

impl CompressCounters {
    /// Counts one payload of `raw` bytes sent as `wire` bytes.
    fn add(&self, raw: usize, wire: usize) {
        self.raw.fetch_add(raw as u64, Ordering::Relaxed);
        self.wire.fetch_add(wire as u64, Ordering::Relaxed);
    }

    /// (bytes before compression, bytes sent for them).
    pub fn get(&self) -> (u64, u64) {
        (
            self.raw.load(Ordering::Relaxed),
            self.wire.load(Ordering::Relaxed),
        )
    }
}

/// The sending side: a reused zstd context and output buffer.
pub struct Packer {
    cctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    counters: std::sync::Arc<CompressCounters>,
}

impl Packer {
    pub fn new() -> Result<Packer, WireError> {
        Ok(Packer {
            cctx: zstd::bulk::Compressor::new(LEVEL)?,
            out: Vec::new(),
            counters: Default::default(),
        })
    }

    /// Counts into `counters` from now on.
    pub fn count_into(&mut self, counters: std::sync::Arc<CompressCounters>) {
        self.counters = counters;
    }

    /// The compressed form of `payload` if it is smaller (else `None`: send it raw).
    /// Counted either way.
    pub fn pack(&mut self, payload: &[u8]) -> Option<&[u8]> {
        self.out.clear();
        // A destination one byte short of the payload: libzstd stops with an error
        // as soon as the output would not be smaller.
        let room = payload.len().saturating_sub(1);
        self.out.reserve(room);
        let packed = match self.cctx.compress_to_buffer(payload, &mut self.out) {
            Ok(n) if n < payload.len() => Some(n),
            _ => None,
        };
        self.counters
            .add(payload.len(), packed.unwrap_or(payload.len()));
        packed.map(|n| &self.out[..n])
    }
}

/// The receiving side: a reused zstd context.
pub struct Unpacker {
    dctx: zstd::bulk::Decompressor<'static>,
}

impl Unpacker {
    pub fn new() -> Result<Unpacker, WireError> {
        Ok(Unpacker {
            dctx: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decompresses `packed`, which must give exactly `raw_len` bytes (at most
    /// [`MAX_DATA`]) and be smaller than them; never allocates more than `raw_len`.
    pub fn unpack(&mut self, packed: &[u8], raw_len: usize) -> Result<Vec<u8>, WireError> {
        if raw_len > MAX_DATA {
            return Err(WireError::TooLarge(raw_len));
        }
        if packed.is_empty() || packed.len() >= raw_len {
            return Err(WireError::Malformed(
                "compressed payload not smaller than its data",
            ));
        }
        let mut out = Vec::with_capacity(raw_len);
        match self.dctx.decompress_to_buffer(packed, &mut out) {
            Ok(n) if n == raw_len => Ok(out),
            Ok(_) => Err(WireError::Malformed(
                "compressed payload does not give its stated length",
            )),
            Err(_) => Err(WireError::Malformed(
                "compressed payload is not valid zstd or is over its stated length",
            )),
        }
    }
}
