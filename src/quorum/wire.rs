//! The quorum datagram: consensus messages and lease traffic between voters. A pure
//! (no I/O) encoder/decoder, modelled on the heartbeat codec (`cluster::packet`), plus
//! the receive-side [`Dedup`] of the copies that arrive on the other heartbeat paths.
//!
//! # Wire format, versions 1 and 2
//!
//! All integers are big-endian (network byte order). Strings are a `u8` byte length
//! followed by that many bytes of UTF-8; names are 1..=[`MAX_NAME_LEN`] bytes. The
//! whole datagram, MAC included, is at most [`MAX_DATAGRAM`] bytes: raft appends and
//! snapshots can exceed an Ethernet frame, so unlike heartbeats a quorum datagram may
//! be fragmented by IP (acceptable on the cluster's heartbeat networks); 65 000 stays
//! below the largest UDP payload over IPv4 (65 507) and IPv6 (65 527).
//!
//! ```text
//! magic          4   b"TDQM"
//! version        1   MIN_VERSION..=MAX_VERSION
//! cluster        str
//! from           str  sender voter name
//! voters_digest  u64  see voters_digest()
//! boot_id        u64
//! seq            u64
//! sent_ms        u64
//! [max_version]  u8   only if version >= 2: the sender's MAX_VERSION, >= version
//! msg_count      u8   <= MAX_MSGS
//! msg * msg_count:
//!   kind         u8   1 raft, 2 renew, 3 ack, 4 report
//!   kind 1 (raft):
//!     len        u32  <= MAX_RAFT_LEN
//!     bytes      len  eraftpb::Message, protobuf
//!   kind 2 (renew):
//!     count      u8   <= MAX_ENTRIES
//!     (group str, epoch u64) * count
//!   kind 3 (ack):
//!     count      u8   <= MAX_ENTRIES
//!     (group str, epoch u64, renewal_sent_ms u64) * count
//!   kind 4 (report):
//!     count      u8   <= MAX_ENTRIES
//!     (group str, epoch u64, since_current_ms u64, quiet_ms u64) * count
//! mac            32   HMAC-SHA256(cluster key, all preceding bytes)
//! ```
//!
//! The MAC is the full, untruncated HMAC-SHA256 tag. [`decode`] checks only the
//! unauthenticated framing (size, magic, version) before verifying the tag in constant
//! time via `hmac::Mac::verify_slice`; body fields are parsed only from authenticated
//! bytes. The version byte is covered by the MAC, so it cannot be rewritten to
//! downgrade. The encoding is canonical: there are no flags, padding or optional
//! fields, every length is exact and trailing bytes are refused, so whatever decodes
//! re-encodes to the same bytes (the fuzz target `quorum_decode` checks it). The
//! encoder refuses (with a [`WireError`], never a panic) everything the decoder would.
//!
//! # Versions
//!
//! The decoder accepts [`MIN_VERSION`]..=[`MAX_VERSION`]; version 1 has no
//! `max_version` (it decodes as 1), and every version from 2 up encodes the same way
//! (the `proto-next` feature raises [`MAX_VERSION`] by one for the mixed-build lab
//! test). As with heartbeats (`cluster::packet::version_for`), each voter's datagrams
//! go out at the lower of the two maxima once `quorum::outbox::Outbox::admit` has
//! seen one from it, and at this build's maximum before: the datagram carries its own
//! maximum (rather than taking the heartbeat's) so that the witness, which sends no
//! heartbeats, negotiates the same way.
//!
//! # Duplicates
//!
//! A sender puts the same datagram (same `boot_id` and `seq`) on every heartbeat path.
//! [`Dedup::accept`] passes the first copy of each (from, boot_id, seq) and drops the
//! rest. Per sender it remembers the current `boot_id`, the highest `seq` seen and
//! which of the last [`DEDUP_WINDOW`] sequence numbers (highest included) arrived:
//! a `seq` within the window is accepted once, in any order; one older than the window
//! is dropped. A different `boot_id` (the sender restarted) resets the sender's window
//! and is accepted. Boot ids are random, so a straggler from an earlier boot also
//! resets the window; a copy of it or of a later datagram may then pass twice, which
//! raft and the lease rules tolerate (dedup saves work, it is not replay protection).
//! Dedup runs after [`decode`], on authenticated datagrams only.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Maximum encoded datagram size in bytes, MAC included.
pub const MAX_DATAGRAM: usize = 65_000;
/// Magic bytes at the start of every quorum datagram ("TanDem QuoruM").
pub const MAGIC: [u8; 4] = *b"TDQM";
/// The oldest wire format version this codec reads and writes.
pub const MIN_VERSION: u8 = 1;
/// The newest wire format version this codec reads and writes.
pub const MAX_VERSION: u8 = if cfg!(feature = "proto-next") { 3 } else { 2 };
/// Length of the trailing HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Maximum byte length of any name (cluster, sender, group).
pub const MAX_NAME_LEN: usize = 64;
/// Maximum number of messages in one datagram.
pub const MAX_MSGS: usize = 64;
/// Maximum number of entries in one renew, ack or report message.
pub const MAX_ENTRIES: usize = 32;
/// How many sequence numbers per sender [`Dedup`] remembers.
pub const DEDUP_WINDOW: u64 = 256;

const KIND_RAFT: u8 = 1;
const KIND_RENEW: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_REPORT: u8 = 4;

/// magic + version: the part inspected before anything else.
const PREAMBLE_LEN: usize = MAGIC.len() + 1;
/// Smallest possibly valid datagram: 1-byte names, no messages.
pub const MIN_DATAGRAM: usize = PREAMBLE_LEN
    + 2 // cluster (len + 1 byte)
    + 2 // from
    + 8 * 4 // voters_digest, boot_id, seq, sent_ms
    + 1 // msg_count
    + MAC_LEN;
/// The largest raft message any datagram can carry (1-byte names, that message
/// alone): a longer length field is refused as [`WireError::RaftTooLong`].
pub const MAX_RAFT_LEN: usize = MAX_DATAGRAM - MIN_DATAGRAM - 1 - 4;

/// One quorum datagram. The same datagram (same `seq`) goes out on every heartbeat
/// path at once; receivers drop the copies after the first (see [`Dedup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPacket {
    /// The wire version this datagram is (to be) encoded in.
    pub version: u8,
    /// The sender's newest version ([`MAX_VERSION`]); 1 for a version-1 datagram.
    pub max_version: u8,
    /// Cluster name; a mismatch is [`WireError::WrongCluster`].
    pub cluster: String,
    /// Sender voter name.
    pub from: String,
    /// Digest of the sorted voter names the sender uses (ids are positions in that
    /// list): a mismatch means the two configs disagree, and the packet is dropped.
    pub voters_digest: u64,
    /// Random per sender start.
    pub boot_id: u64,
    /// Per sender boot, strictly increasing per datagram (not per path).
    pub seq: u64,
    /// Sender's monotonic clock in ms when sent.
    pub sent_ms: u64,
    pub msgs: Vec<QuorumMsg>,
}

/// One message inside a quorum datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumMsg {
    /// A raft-rs message (`eraftpb::Message`, protobuf-encoded).
    Raft(Vec<u8>),
    /// An owner renews its leases: (group, epoch) pairs, stamped with the datagram's
    /// `sent_ms`.
    Renew(Vec<GroupEpoch>),
    /// A voter acknowledges renewals: (group, epoch, the renewal's `sent_ms` on the
    /// owner's clock).
    Ack(Vec<LeaseAck>),
    /// A voter's report, for every group in its applied register.
    Report(Vec<LeaseReport>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEpoch {
    pub group: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAck {
    pub group: String,
    pub epoch: u64,
    pub renewal_sent_ms: u64,
}

/// What a voter tells the others about one group, on its own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReport {
    pub group: String,
    /// The epoch of the group in the voter's applied register.
    pub epoch: u64,
    /// How long since the voter last acknowledged a renewal of that epoch.
    pub since_current_ms: u64,
    /// How long since the voter last acknowledged a renewal of any lower epoch.
    pub quiet_ms: u64,
}

/// Why a quorum datagram could not be encoded or was rejected. See
/// [`WireError::reason`] for counter labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_DATAGRAM`] (received, or as it would be encoded).
    #[error("datagram of {len} bytes exceeds {MAX_DATAGRAM}")]
    TooLarge { len: usize },
    /// Shorter than the smallest possible quorum datagram.
    #[error("datagram of {len} bytes is shorter than the minimum {need}")]
    Truncated { len: usize, need: usize },
    /// Does not start with [`MAGIC`]: not a Tandem quorum datagram.
    #[error("bad magic")]
    BadMagic,
    /// Unsupported wire version (received, or asked to encode: outside
    /// [`MIN_VERSION`]..=[`MAX_VERSION`] or above the packet's `max_version`).
    #[error("unsupported version {0} (this build {MIN_VERSION}..={MAX_VERSION})")]
    BadVersion(u8),
    /// An authenticated `max_version` below the datagram's version.
    #[error("max_version {max} below the version {version}")]
    MaxBelowVersion { version: u8, max: u8 },
    /// MAC verification failed (wrong key, corruption or forgery), or the local key
    /// is empty.
    #[error("message authentication failed")]
    BadMac,
    /// An empty key authenticates nothing; refuse to send.
    #[error("cluster key is empty")]
    EmptyKey,
    /// An authenticated field runs past the end of the body.
    #[error("field runs past the end of the body")]
    Overrun,
    /// A name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("{field} name must be 1..={MAX_NAME_LEN} bytes, got {len}")]
    BadName { field: &'static str, len: usize },
    /// A name is not valid UTF-8.
    #[error("{field} name is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    /// More than [`MAX_MSGS`] messages.
    #[error("{count} messages in datagram, limit is {MAX_MSGS}")]
    TooManyMessages { count: usize },
    /// More than [`MAX_ENTRIES`] entries in a renew, ack or report message.
    #[error("{count} entries in {kind} message, limit is {MAX_ENTRIES}")]
    TooManyEntries { kind: &'static str, count: usize },
    /// A raft message longer than [`MAX_RAFT_LEN`] bytes.
    #[error("raft message of {len} bytes exceeds {MAX_RAFT_LEN}")]
    RaftTooLong { len: usize },
    /// A message kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Authenticated bytes after the last message.
    #[error("trailing bytes after the last message")]
    TrailingBytes,
    /// Authenticated, well-formed, but for another cluster.
    #[error("quorum datagram for cluster {got:?}, expected {expected:?}")]
    WrongCluster { expected: String, got: String },
}

impl WireError {
    /// Short snake_case label, stable for use as a metrics/counter label.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::Truncated { .. } => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion(_) => "bad_version",
            WireError::MaxBelowVersion { .. } => "max_below_version",
            WireError::BadMac => "bad_mac",
            WireError::EmptyKey => "empty_key",
            WireError::Overrun => "overrun",
            WireError::BadName { .. } => "bad_name",
            WireError::BadUtf8 { .. } => "bad_utf8",
            WireError::TooManyMessages { .. } => "too_many_messages",
            WireError::TooManyEntries { .. } => "too_many_entries",
            WireError::RaftTooLong { .. } => "raft_too_long",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::TrailingBytes => "trailing_bytes",
            WireError::WrongCluster { .. } => "wrong_cluster",
        }
    }
}

/// Digest of a voter list: the first 8 bytes (big-endian) of SHA-256 over the sorted
/// voter names, each followed by a 0 byte. Independent of the input order.
pub fn voters_digest(voters: &[String]) -> u64 {
    let mut sorted: Vec<&str> = voters.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for v in sorted {
        h.update(v.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn new_mac(key: &[u8]) -> Option<HmacSha256> {
    if key.is_empty() {
        return None;
    }
    // HMAC accepts keys of any length (RFC 2104 §2), so this cannot fail; still
    // mapped rather than unwrapped.
    <HmacSha256 as Mac>::new_from_slice(key).ok()
}

/// Entry label of a message kind, for [`WireError::TooManyEntries`].
fn entries_label(kind: u8) -> &'static str {
    match kind {
        KIND_RENEW => "renew",
        KIND_ACK => "ack",
        _ => "report",
    }
}

fn check_name(field: &'static str, s: &str) -> Result<(), WireError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(WireError::BadName {
            field,
            len: s.len(),
        });
    }
    Ok(())
}

/// Checks one lease message's entries: at most [`MAX_ENTRIES`], valid group names.
/// Returns their encoded size (count byte included); `fixed` is the size of an
/// entry's integers.
fn check_entries<'a>(
    kind: u8,
    groups: impl ExactSizeIterator<Item = &'a str>,
    fixed: usize,
) -> Result<usize, WireError> {
    if groups.len() > MAX_ENTRIES {
        return Err(WireError::TooManyEntries {
            kind: entries_label(kind),
            count: groups.len(),
        });
    }
    let mut len = 1;
    for g in groups {
        check_name("group", g)?;
        len += 1 + g.len() + fixed;
    }
    Ok(len)
}

/// Checks one message and returns its encoded size, kind byte included.
fn check_msg(m: &QuorumMsg) -> Result<usize, WireError> {
    let body = match m {
        QuorumMsg::Raft(bytes) => {
            if bytes.len() > MAX_RAFT_LEN {
                return Err(WireError::RaftTooLong { len: bytes.len() });
            }
            4 + bytes.len()
        }
        QuorumMsg::Renew(es) => check_entries(KIND_RENEW, es.iter().map(|e| &*e.group), 8)?,
        QuorumMsg::Ack(es) => check_entries(KIND_ACK, es.iter().map(|e| &*e.group), 16)?,
        QuorumMsg::Report(es) => check_entries(KIND_REPORT, es.iter().map(|e| &*e.group), 24)?,
    };
    Ok(1 + body)
}

/// Checks everything [`decode`] would refuse in a body and returns the encoded size,
/// MAC included.
fn check_packet(p: &QuorumPacket) -> Result<usize, WireError> {
    if !(MIN_VERSION..=MAX_VERSION).contains(&p.version) || p.version > p.max_version {
        return Err(WireError::BadVersion(p.version));
    }
    check_name("cluster", &p.cluster)?;
    check_name("from", &p.from)?;
    if p.msgs.len() > MAX_MSGS {
        return Err(WireError::TooManyMessages {
            count: p.msgs.len(),
        });
    }
    let mut len = MIN_DATAGRAM - 2 + p.cluster.len() + p.from.len() + usize::from(p.version >= 2);
    for m in &p.msgs {
        len += check_msg(m)?;
    }
    if len > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len });
    }
    Ok(len)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Length checked by check_name to be <= MAX_NAME_LEN < 256.
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Writes a lease message: kind, count, then each entry's group and integers.
/// Counts were checked by [`check_entries`].
fn put_entries<T, const N: usize>(
    out: &mut Vec<u8>,
    kind: u8,
    entries: &[T],
    fields: impl Fn(&T) -> (&str, [u64; N]),
) {
    out.push(kind);
    out.push(entries.len() as u8);
    for e in entries {
        let (group, ints) = fields(e);
        put_str(out, group);
        put_u64s(out, &ints);
    }
}

fn put_msg(out: &mut Vec<u8>, m: &QuorumMsg) {
    match m {
        QuorumMsg::Raft(bytes) => {
            out.push(KIND_RAFT);
            // Bounded by MAX_RAFT_LEN < u32::MAX in check_msg.
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        QuorumMsg::Renew(es) => put_entries(out, KIND_RENEW, es, |e| (e.group.as_str(), [e.epoch])),
        QuorumMsg::Ack(es) => put_entries(out, KIND_ACK, es, |e| {
            (e.group.as_str(), [e.epoch, e.renewal_sent_ms])
        }),
        QuorumMsg::Report(es) => put_entries(out, KIND_REPORT, es, |e| {
            (e.group.as_str(), [e.epoch, e.since_current_ms, e.quiet_ms])
        }),
    }
}

/// Encodes and authenticates a quorum datagram under `key`.
pub fn encode(p: &QuorumPacket, key: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut mac = new_mac(key).ok_or(WireError::EmptyKey)?;
    let len = check_packet(p)?;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.push(p.version);
    put_str(&mut out, &p.cluster);
    put_str(&mut out, &p.from);
    put_u64s(&mut out, &[p.voters_digest, p.boot_id, p.seq, p.sent_ms]);
    if p.version >= 2 {
        out.push(p.max_version);
    }
    // Bounded by MAX_MSGS < 256 in check_packet.
    out.push(p.msgs.len() as u8);
    for m in &p.msgs {
        put_msg(&mut out, m);
    }
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

/// Bounds-checked cursor over the authenticated body. Every read returns an error
/// instead of panicking when the body is too short.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Overrun)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Overrun)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?.try_into().map_err(|_| WireError::Overrun)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn name(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(WireError::BadName { field, len });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::BadUtf8 { field })
    }

    /// Whether the whole body has been read.
    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Reads the message count and that many messages.
    fn msgs(&mut self) -> Result<Vec<QuorumMsg>, WireError> {
        let count = usize::from(self.u8()?);
        if count > MAX_MSGS {
            return Err(WireError::TooManyMessages { count });
        }
        let mut msgs = Vec::with_capacity(count);
        for _ in 0..count {
            msgs.push(self.msg()?);
        }
        Ok(msgs)
    }

    /// Reads one message: its kind byte, then the kind's body.
    fn msg(&mut self) -> Result<QuorumMsg, WireError> {
        Ok(match self.u8()? {
            KIND_RAFT => {
                let len = self.u32()? as usize;
                if len > MAX_RAFT_LEN {
                    return Err(WireError::RaftTooLong { len });
                }
                QuorumMsg::Raft(self.take(len)?.to_vec())
            }
            KIND_RENEW => QuorumMsg::Renew(self.entries(KIND_RENEW, |r| {
                Ok(GroupEpoch {
                    group: r.name("group")?,
                    epoch: r.u64()?,
                })
            })?),
            KIND_ACK => QuorumMsg::Ack(self.entries(KIND_ACK, |r| {
                Ok(LeaseAck {
                    group: r.name("group")?,
                    epoch: r.u64()?,
                    renewal_sent_ms: r.u64()?,
                })
            })?),
            KIND_REPORT => QuorumMsg::Report(self.entries(KIND_REPORT, |r| {
                Ok(LeaseReport {
                    group: r.name("group")?,
                    epoch: r.u64()?,
                    since_current_ms: r.u64()?,
                    quiet_ms: r.u64()?,
                })
            })?),
            other => return Err(WireError::UnknownKind(other)),
        })
    }

    /// Reads a lease message's entry count and that many entries.
    fn entries<T>(
        &mut self,
        kind: u8,
        entry: impl Fn(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let count = usize::from(self.u8()?);
        if count > MAX_ENTRIES {
            return Err(WireError::TooManyEntries {
                kind: entries_label(kind),
                count,
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(entry(self)?);
        }
        Ok(entries)
    }
}

/// Verifies and decodes one datagram. `cluster` is the local cluster name.
///
/// Check order: size, magic, version (unauthenticated framing), then the MAC in
/// constant time, then the body. Never panics on any input.
pub fn decode(buf: &[u8], key: &[u8], cluster: &str) -> Result<QuorumPacket, WireError> {
    check_framing(buf)?;
    let signed = authenticate(buf, key)?;
    let mut r = Reader {
        buf: signed,
        pos: PREAMBLE_LEN,
    };
    let got_cluster = r.name("cluster")?;
    let from = r.name("from")?;
    let voters_digest = r.u64()?;
    let boot_id = r.u64()?;
    let seq = r.u64()?;
    let sent_ms = r.u64()?;
    let version = signed[MAGIC.len()];
    let max_version = if version >= 2 { r.u8()? } else { 1 };
    if max_version < version {
        return Err(WireError::MaxBelowVersion {
            version,
            max: max_version,
        });
    }
    let msgs = r.msgs()?;
    if !r.at_end() {
        return Err(WireError::TrailingBytes);
    }
    if got_cluster != cluster {
        return Err(WireError::WrongCluster {
            expected: cluster.to_owned(),
            got: got_cluster,
        });
    }
    Ok(QuorumPacket {
        version,
        max_version,
        cluster: got_cluster,
        from,
        voters_digest,
        boot_id,
        seq,
        sent_ms,
        msgs,
    })
}

/// Checks the unauthenticated framing, in order: size limit, magic, version, minimum
/// size.
fn check_framing(buf: &[u8]) -> Result<(), WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge { len: buf.len() });
    }
    let truncated = WireError::Truncated {
        len: buf.len(),
        need: MIN_DATAGRAM,
    };
    let Some((preamble, _)) = buf.split_first_chunk::<PREAMBLE_LEN>() else {
        return Err(truncated);
    };
    if preamble[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = preamble[MAGIC.len()];
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(WireError::BadVersion(version));
    }
    if buf.len() < MIN_DATAGRAM {
        return Err(truncated);
    }
    Ok(())
}

/// Verifies the trailing MAC of a framed datagram (at least [`MIN_DATAGRAM`] bytes)
/// and returns the authenticated bytes before it.
fn authenticate<'a>(buf: &'a [u8], key: &[u8]) -> Result<&'a [u8], WireError> {
    let (signed, tag) = buf.split_at(buf.len() - MAC_LEN);
    let mut mac = new_mac(key).ok_or(WireError::BadMac)?;
    mac.update(signed);
    // Constant-time comparison (subtle::ConstantTimeEq inside hmac) so the tag cannot
    // be recovered byte by byte through timing.
    mac.verify_slice(tag).map_err(|_| WireError::BadMac)?;
    Ok(signed)
}

/// Drops the copies of a datagram that arrive on the other heartbeat paths (see the
/// module header). Deterministic: no clocks, senders in a `BTreeMap`.
#[derive(Debug, Clone, Default)]
pub struct Dedup {
    senders: BTreeMap<String, SeqWindow>,
}

/// One sender's boot and the sequence numbers seen in `(highest - 256, highest]`: bit
/// `seq % 256` of `seen`, a ring that [`SeqWindow::advance`] clears as it slides.
#[derive(Debug, Clone)]
struct SeqWindow {
    boot_id: u64,
    highest: u64,
    seen: [u64; (DEDUP_WINDOW / 64) as usize],
}

impl SeqWindow {
    fn new(boot_id: u64, seq: u64) -> Self {
        let mut w = SeqWindow {
            boot_id,
            highest: seq,
            seen: [0; (DEDUP_WINDOW / 64) as usize],
        };
        w.mark(seq);
        w
    }

    /// Word index and bit mask of `seq` in the ring.
    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % DEDUP_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn mark(&mut self, seq: u64) {
        let (w, bit) = Self::slot(seq);
        self.seen[w] |= bit;
    }

    fn is_marked(&self, seq: u64) -> bool {
        let (w, bit) = Self::slot(seq);
        self.seen[w] & bit != 0
    }

    /// Slides the window so that `seq` (> `highest`) is its newest number, forgetting
    /// the numbers that fall out of it.
    fn advance(&mut self, seq: u64) {
        if seq - self.highest >= DEDUP_WINDOW {
            self.seen = [0; (DEDUP_WINDOW / 64) as usize];
        } else {
            for s in self.highest + 1..=seq {
                let (w, bit) = Self::slot(s);
                self.seen[w] &= !bit;
            }
        }
        self.highest = seq;
    }

    /// Whether `seq` is new, marking it seen if so.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            self.advance(seq);
        } else if self.highest - seq >= DEDUP_WINDOW || self.is_marked(seq) {
            return false;
        }
        self.mark(seq);
        true
    }
}

impl Dedup {
    /// True the first time a (`from`, `boot_id`, `seq`) is seen; false for a copy, or
    /// for a `seq` older than the last [`DEDUP_WINDOW`] of the sender's current boot.
    /// A new `boot_id` resets the sender's window.
    pub fn accept(&mut self, from: &str, boot_id: u64, seq: u64) -> bool {
        match self.senders.get_mut(from) {
            Some(w) if w.boot_id == boot_id => w.accept(seq),
            Some(w) => {
                *w = SeqWindow::new(boot_id, seq);
                true
            }
            None => {
                self.senders
                    .insert(from.to_owned(), SeqWindow::new(boot_id, seq));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"test-cluster-key";
    /// Offset of the message count in every packet with cluster "prod", from "a".
    const MSG_COUNT_AT: usize = PREAMBLE_LEN + 5 + 2 + 8 * 4;

    fn sample() -> QuorumPacket {
        QuorumPacket {
            version: 1,
            max_version: 1,
            cluster: "prod".into(),
            from: "a".into(),
            voters_digest: 0x1112_1314_1516_1718,
            boot_id: 0x0102_0304_0506_0708,
            seq: 42,
            sent_ms: 5000,
            msgs: vec![
                QuorumMsg::Raft(vec![0xaa, 0xbb]),
                QuorumMsg::Renew(vec![GroupEpoch {
                    group: "db".into(),
                    epoch: 3,
                }]),
            ],
        }
    }

    fn with_msgs(msgs: Vec<QuorumMsg>) -> QuorumPacket {
        QuorumPacket { msgs, ..sample() }
    }

    fn renew(n: usize) -> QuorumMsg {
        QuorumMsg::Renew(
            (0..n)
                .map(|i| GroupEpoch {
                    group: format!("g{i}"),
                    epoch: i as u64,
                })
                .collect(),
        )
    }

    fn ack(n: usize) -> QuorumMsg {
        QuorumMsg::Ack(
            (0..n)
                .map(|i| LeaseAck {
                    group: format!("g{i}"),
                    epoch: i as u64,
                    renewal_sent_ms: u64::MAX - i as u64,
                })
                .collect(),
        )
    }

    fn report(n: usize) -> QuorumMsg {
        QuorumMsg::Report(
            (0..n)
                .map(|i| LeaseReport {
                    group: format!("g{i}"),
                    epoch: i as u64,
                    since_current_ms: 7 * i as u64,
                    quiet_ms: 11 * i as u64,
                })
                .collect(),
        )
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Re-signs a (possibly edited) body so tests can reach the body parser.
    fn resign(body: &[u8]) -> Vec<u8> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(KEY).expect("hmac key");
        mac.update(body);
        let mut out = body.to_vec();
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    fn body_of(pkt: &[u8]) -> Vec<u8> {
        pkt[..pkt.len() - MAC_LEN].to_vec()
    }

    fn decode_body(body: &[u8]) -> Result<QuorumPacket, WireError> {
        decode(&resign(body), KEY, "prod")
    }

    fn round_trip(p: &QuorumPacket) {
        let pkt = encode(p, KEY).expect("encode");
        assert!(pkt.len() <= MAX_DATAGRAM);
        assert_eq!(decode(&pkt, KEY, "prod").as_ref(), Ok(p));
    }

    #[test]
    fn golden_encoding() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let body = concat!(
            "5444514d",         // magic "TDQM"
            "01",               // version
            "0470726f64",       // cluster "prod"
            "0161",             // from "a"
            "1112131415161718", // voters_digest
            "0102030405060708", // boot_id
            "000000000000002a", // seq 42
            "0000000000001388", // sent_ms 5000
            "02",               // 2 messages
            "01",               // raft
            "00000002",         // 2 bytes
            "aabb",             //
            "02",               // renew
            "01",               // 1 entry
            "026462",           // group "db"
            "0000000000000003", // epoch 3
        );
        assert_eq!(hex(&body_of(&pkt)), body);
        assert_eq!(pkt[MSG_COUNT_AT], 2);
        // HMAC-SHA256(KEY, body), cross-checked with Python's hmac module when this
        // vector was pinned.
        assert_eq!(
            hex(&pkt[pkt.len() - MAC_LEN..]),
            "d8c85972a5e809e0438149608efc91569f5291163c858fbb847a94cdebab7b2e",
        );
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(sample()));
    }

    #[test]
    fn version_2_carries_the_senders_maximum_and_version_1_still_decodes() {
        let v2 = QuorumPacket {
            version: 2,
            max_version: 3,
            ..sample()
        };
        let pkt = encode(&v2, KEY).expect("encode");
        let mut want = hex(&body_of(&encode(&sample(), KEY).expect("encode")));
        want.replace_range(8..10, "02");
        want.insert_str(2 * MSG_COUNT_AT, "03");
        assert_eq!(hex(&body_of(&pkt)), want);
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(v2.clone()));
        let old = decode(&encode(&sample(), KEY).expect("encode"), KEY, "prod").expect("v1");
        assert_eq!((old.version, old.max_version), (1, 1));
        // Rewriting the version fails the MAC; a version outside the range is refused
        // before it, both ways.
        let mut forged = pkt.clone();
        forged[MAGIC.len()] = 1;
        assert_eq!(decode(&forged, KEY, "prod"), Err(WireError::BadMac));
        forged[MAGIC.len()] = MAX_VERSION + 1;
        assert_eq!(
            decode(&forged, KEY, "prod"),
            Err(WireError::BadVersion(MAX_VERSION + 1))
        );
        for (version, max_version) in [(0, 2), (MAX_VERSION + 1, MAX_VERSION + 1), (2, 1)] {
            let p = QuorumPacket {
                version,
                max_version,
                ..sample()
            };
            assert_eq!(encode(&p, KEY), Err(WireError::BadVersion(version)));
        }
        // An authenticated max_version below the version.
        let mut body = body_of(&pkt);
        body[MSG_COUNT_AT] = 1;
        assert_eq!(
            decode_body(&body),
            Err(WireError::MaxBelowVersion { version: 2, max: 1 })
        );
    }

    #[test]
    fn round_trip_every_kind() {
        round_trip(&with_msgs(vec![]));
        round_trip(&with_msgs(vec![QuorumMsg::Raft(vec![])]));
        round_trip(&with_msgs(vec![renew(0), ack(0), report(0)]));
        round_trip(&with_msgs(vec![renew(3)]));
        round_trip(&with_msgs(vec![ack(3)]));
        round_trip(&with_msgs(vec![report(3)]));
        round_trip(&with_msgs(vec![
            report(2),
            QuorumMsg::Raft((0..=255).collect()),
            ack(1),
            renew(2),
            QuorumMsg::Raft(vec![0; 1000]),
        ]));
        let mut p = sample();
        p.cluster = "é".repeat(MAX_NAME_LEN / 2);
        p.from = "f".repeat(MAX_NAME_LEN);
        p.voters_digest = u64::MAX;
        p.boot_id = 0;
        p.seq = u64::MAX;
        p.sent_ms = 0;
        let pkt = encode(&p, KEY).expect("encode");
        assert_eq!(decode(&pkt, KEY, &p.cluster), Ok(p));
        let empty = encode(&with_msgs(vec![]), KEY).expect("encode");
        assert_eq!(empty.len(), MIN_DATAGRAM + "prod".len() - 1);
    }

    #[test]
    fn voters_digest_vectors() {
        let v = |names: &[&str]| {
            voters_digest(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        // SHA-256("a\0b\0c\0") and SHA-256(""), first 8 bytes (Python's hashlib).
        assert_eq!(v(&["a", "b", "c"]), 0x13e2_2856_7e82_49fc);
        assert_eq!(v(&["c", "a", "b"]), 0x13e2_2856_7e82_49fc);
        assert_eq!(v(&[]), 0xe3b0_c442_98fc_1c14);
        assert_ne!(v(&["ab"]), v(&["a", "b"]));
        assert_ne!(v(&["a", "b"]), v(&["a", "b", "b"]));
    }

    #[test]
    fn wrong_key_is_bad_mac() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let e = decode(&pkt, b"other-key", "prod").unwrap_err();
        assert_eq!(e, WireError::BadMac);
        assert_eq!(e.reason(), "bad_mac");
        assert_eq!(decode(&pkt, b"", "prod"), Err(WireError::BadMac));
        assert_eq!(encode(&sample(), b""), Err(WireError::EmptyKey));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let pkt = encode(&sample(), KEY).expect("encode");
        for i in 0..pkt.len() * 8 {
            let mut m = pkt.clone();
            m[i / 8] ^= 1 << (i % 8);
            let e = decode(&m, KEY, "prod").unwrap_err();
            let want = match i / 8 {
                0..=3 => "bad_magic",
                // Another version this build reads still fails the MAC.
                4 if (MIN_VERSION..=MAX_VERSION).contains(&m[4]) => "bad_mac",
                4 => "bad_version",
                _ => "bad_mac",
            };
            assert_eq!(e.reason(), want, "bit {i}");
        }
    }

    #[test]
    fn wrong_cluster() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let e = decode(&pkt, KEY, "staging").unwrap_err();
        assert_eq!(e.reason(), "wrong_cluster");
        assert_eq!(
            e,
            WireError::WrongCluster {
                expected: "staging".into(),
                got: "prod".into()
            }
        );
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            decode(&vec![0u8; MAX_DATAGRAM + 1], KEY, "prod"),
            Err(WireError::TooLarge {
                len: MAX_DATAGRAM + 1
            })
        );
        assert_eq!(decode(b"TDHB\x01", KEY, "prod"), Err(WireError::BadMagic));
        assert_eq!(
            decode(b"TDQ", KEY, "prod"),
            Err(WireError::Truncated {
                len: 3,
                need: MIN_DATAGRAM
            })
        );
        let mut pkt = encode(&sample(), KEY).expect("encode");
        pkt[4] = MAX_VERSION + 1;
        assert_eq!(
            decode(&pkt, KEY, "prod"),
            Err(WireError::BadVersion(MAX_VERSION + 1))
        );
    }

    #[test]
    fn truncation() {
        let pkt = encode(&sample(), KEY).expect("encode");
        for n in 0..pkt.len() {
            let e = decode(&pkt[..n], KEY, "prod").unwrap_err();
            let want = if n < MIN_DATAGRAM {
                "truncated"
            } else {
                "bad_mac"
            };
            assert_eq!(e.reason(), want, "len {n}");
        }
        // Signed but cut short: no strict prefix of a body is a body.
        let body = body_of(&pkt);
        for n in PREAMBLE_LEN..body.len() {
            let want = if n + MAC_LEN < MIN_DATAGRAM {
                "truncated"
            } else {
                "overrun"
            };
            assert_eq!(
                decode_body(&body[..n]).map_err(|e| e.reason()),
                Err(want),
                "body cut to {n}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let mut pkt = encode(&sample(), KEY).expect("encode");
        pkt.push(0);
        assert_eq!(decode(&pkt, KEY, "prod"), Err(WireError::BadMac));
        // Even if the sender signs the trailing bytes, the body parser refuses.
        let mut body = body_of(&encode(&sample(), KEY).expect("encode"));
        body.push(0);
        assert_eq!(decode_body(&body), Err(WireError::TrailingBytes));
    }

    #[test]
    fn non_canonical_rejected() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        // The message count says 1: the renew message is left over.
        let mut b = body.clone();
        b[MSG_COUNT_AT] = 1;
        assert_eq!(decode_body(&b), Err(WireError::TrailingBytes));
        // The raft length leaves its second byte (0xbb) to be read as a kind.
        let mut b = body.clone();
        b[MSG_COUNT_AT + 5] = 1;
        assert_eq!(decode_body(&b), Err(WireError::UnknownKind(0xbb)));
        // Zero padding after the last message.
        let mut b = body.clone();
        b.extend_from_slice(&[0; 8]);
        assert_eq!(decode_body(&b), Err(WireError::TrailingBytes));
        // A renew entry count of 0 followed by the entry.
        let renew_count_at = MSG_COUNT_AT + 1 + 1 + 4 + 2 + 1;
        assert_eq!(body[renew_count_at], 1);
        let mut b = body;
        b[renew_count_at] = 0;
        assert_eq!(decode_body(&b), Err(WireError::TrailingBytes));
        // What decodes re-encodes identically (see also the canonical proptest).
        let pkt = encode(&sample(), KEY).expect("encode");
        let p = decode(&pkt, KEY, "prod").expect("decode");
        assert_eq!(encode(&p, KEY), Ok(pkt));
    }

    #[test]
    fn unknown_kinds() {
        let mut body = body_of(&encode(&with_msgs(vec![renew(0)]), KEY).expect("encode"));
        assert_eq!(body[MSG_COUNT_AT + 1], KIND_RENEW);
        for kind in [0, 5, 0x80, 0xff] {
            body[MSG_COUNT_AT + 1] = kind;
            assert_eq!(decode_body(&body), Err(WireError::UnknownKind(kind)));
        }
    }

    #[test]
    fn message_count_limit() {
        let p = with_msgs(vec![renew(0); MAX_MSGS + 1]);
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::TooManyMessages {
                count: MAX_MSGS + 1
            })
        );
        round_trip(&with_msgs(vec![renew(0); MAX_MSGS]));
        let mut body = body_of(&encode(&with_msgs(vec![]), KEY).expect("encode"));
        for count in [MAX_MSGS + 1, 0xff] {
            body[MSG_COUNT_AT] = count as u8;
            assert_eq!(
                decode_body(&body),
                Err(WireError::TooManyMessages { count })
            );
        }
    }

    #[test]
    fn entry_count_limits() {
        for (kind, make) in [
            ("renew", renew as fn(usize) -> QuorumMsg),
            ("ack", ack),
            ("report", report),
        ] {
            let too_many = WireError::TooManyEntries {
                kind,
                count: MAX_ENTRIES + 1,
            };
            assert_eq!(
                encode(&with_msgs(vec![make(MAX_ENTRIES + 1)]), KEY),
                Err(too_many.clone())
            );
            round_trip(&with_msgs(vec![make(MAX_ENTRIES)]));
            let mut body = body_of(&encode(&with_msgs(vec![make(0)]), KEY).expect("encode"));
            body[MSG_COUNT_AT + 2] = (MAX_ENTRIES + 1) as u8;
            assert_eq!(decode_body(&body), Err(too_many));
            body[MSG_COUNT_AT + 2] = 1; // claims an entry that is not there
            assert_eq!(decode_body(&body), Err(WireError::Overrun));
        }
    }

    #[test]
    fn raft_and_datagram_size_limits() {
        // The largest raft message fills a datagram with 1-byte names exactly.
        let mut p = with_msgs(vec![QuorumMsg::Raft(vec![7; MAX_RAFT_LEN])]);
        p.cluster = "p".into();
        let pkt = encode(&p, KEY).expect("encode");
        assert_eq!(pkt.len(), MAX_DATAGRAM);
        assert_eq!(decode(&pkt, KEY, "p"), Ok(p.clone()));
        p.msgs = vec![QuorumMsg::Raft(vec![7; MAX_RAFT_LEN + 1])];
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::RaftTooLong {
                len: MAX_RAFT_LEN + 1
            })
        );
        // With a longer cluster name the same message no longer fits.
        let p = with_msgs(vec![QuorumMsg::Raft(vec![7; MAX_RAFT_LEN])]);
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::TooLarge {
                len: MAX_DATAGRAM + 3
            })
        );
        let p = with_msgs(vec![QuorumMsg::Raft(vec![0; 40_000]); 2]);
        assert!(matches!(encode(&p, KEY), Err(WireError::TooLarge { .. })));
        // A length field beyond MAX_RAFT_LEN is refused before reading the bytes.
        let mut body = body_of(&encode(&sample(), KEY).expect("encode"));
        for len in [MAX_RAFT_LEN + 1, u32::MAX as usize] {
            body[MSG_COUNT_AT + 2..MSG_COUNT_AT + 6].copy_from_slice(&(len as u32).to_be_bytes());
            assert_eq!(decode_body(&body), Err(WireError::RaftTooLong { len }));
        }
        body[MSG_COUNT_AT + 2..MSG_COUNT_AT + 6].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(decode_body(&body), Err(WireError::Overrun));
    }

    #[test]
    fn name_rules_encode() {
        let mut p = sample();
        p.from = String::new();
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::BadName {
                field: "from",
                len: 0
            })
        );
        p.from = "f".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::BadName {
                field: "from",
                len: MAX_NAME_LEN + 1
            })
        );
        let mut p = sample();
        p.cluster = String::new();
        assert_eq!(
            encode(&p, KEY),
            Err(WireError::BadName {
                field: "cluster",
                len: 0
            })
        );
        for (long, make) in [(false, 0), (true, 1), (true, 2)] {
            let group = if long {
                "g".repeat(MAX_NAME_LEN + 1)
            } else {
                String::new()
            };
            let msg = match make {
                0 => QuorumMsg::Renew(vec![GroupEpoch {
                    group: group.clone(),
                    epoch: 1,
                }]),
                1 => QuorumMsg::Ack(vec![LeaseAck {
                    group: group.clone(),
                    epoch: 1,
                    renewal_sent_ms: 2,
                }]),
                _ => QuorumMsg::Report(vec![LeaseReport {
                    group: group.clone(),
                    epoch: 1,
                    since_current_ms: 2,
                    quiet_ms: 3,
                }]),
            };
            assert_eq!(
                encode(&with_msgs(vec![msg]), KEY),
                Err(WireError::BadName {
                    field: "group",
                    len: group.len()
                })
            );
        }
    }

    #[test]
    fn name_rules_decode() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        let mut b = body.clone();
        b[PREAMBLE_LEN] = 0; // cluster length
        assert_eq!(
            decode_body(&b),
            Err(WireError::BadName {
                field: "cluster",
                len: 0
            })
        );
        let mut b = body.clone();
        b[PREAMBLE_LEN + 5] = (MAX_NAME_LEN + 1) as u8; // from length
        assert_eq!(
            decode_body(&b),
            Err(WireError::BadName {
                field: "from",
                len: MAX_NAME_LEN + 1
            })
        );
        let group_at = MSG_COUNT_AT + 1 + 1 + 4 + 2 + 1 + 1;
        assert_eq!(&body[group_at..group_at + 3], b"\x02db");
        let mut b = body.clone();
        b[group_at] = 0;
        assert_eq!(
            decode_body(&b),
            Err(WireError::BadName {
                field: "group",
                len: 0
            })
        );
        let mut b = body.clone();
        b[PREAMBLE_LEN + 6] = 0xff; // from "a" -> 0xff
        assert_eq!(decode_body(&b), Err(WireError::BadUtf8 { field: "from" }));
        let mut b = body;
        b[group_at + 1] = 0xc3; // "db" -> a truncated two-byte sequence
        assert_eq!(decode_body(&b), Err(WireError::BadUtf8 { field: "group" }));
    }

    #[test]
    fn reasons_are_distinct_snake_case() {
        let all = [
            WireError::TooLarge { len: 0 },
            WireError::Truncated { len: 0, need: 0 },
            WireError::BadMagic,
            WireError::BadVersion(0),
            WireError::MaxBelowVersion { version: 0, max: 0 },
            WireError::BadMac,
            WireError::EmptyKey,
            WireError::Overrun,
            WireError::BadName { field: "", len: 0 },
            WireError::BadUtf8 { field: "" },
            WireError::TooManyMessages { count: 0 },
            WireError::TooManyEntries { kind: "", count: 0 },
            WireError::RaftTooLong { len: 0 },
            WireError::UnknownKind(0),
            WireError::TrailingBytes,
            WireError::WrongCluster {
                expected: String::new(),
                got: String::new(),
            },
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(WireError::reason).collect();
        assert_eq!(reasons.len(), all.len());
        for r in reasons {
            assert!(
                r.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{r}"
            );
        }
    }

    #[test]
    fn dedup_drops_copies_from_other_paths() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 1, 10));
        assert!(!d.accept("a", 1, 10), "same datagram on a second path");
        assert!(!d.accept("a", 1, 10), "and a third");
        // Other senders, and the same seq of another sender, are independent.
        assert!(d.accept("b", 1, 10));
        assert!(d.accept("b", 1, 11));
        assert!(d.accept("a", 1, 11));
        assert!(!d.accept("b", 1, 11));
    }

    #[test]
    fn dedup_reorder_within_window_accepted_once() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 1, 100));
        assert!(d.accept("a", 1, 105));
        for seq in [103, 101, 104, 102] {
            assert!(d.accept("a", 1, seq), "late {seq}");
            assert!(!d.accept("a", 1, seq), "copy of late {seq}");
        }
        // The oldest number still in the window.
        let top = 105 + DEDUP_WINDOW;
        assert!(d.accept("a", 1, top));
        assert!(d.accept("a", 1, top - (DEDUP_WINDOW - 1)));
        assert!(!d.accept("a", 1, top - (DEDUP_WINDOW - 1)));
        // Ring slots reused by the slide are cleared, not mistaken for copies.
        assert!(d.accept("a", 1, top - 1));
        assert!(d.accept("a", 1, top + 3));
        assert!(d.accept("a", 1, top + 1));
        assert!(d.accept("a", 1, top + 2));
    }

    #[test]
    fn dedup_too_old_dropped() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 1, 1000));
        assert!(
            !d.accept("a", 1, 1000 - DEDUP_WINDOW),
            "just outside the window"
        );
        assert!(!d.accept("a", 1, 0));
        assert!(d.accept("a", 1, 1000 - (DEDUP_WINDOW - 1)), "just inside");
        // A jump past the whole window forgets everything before it.
        assert!(d.accept("a", 1, 1000 + 10 * DEDUP_WINDOW));
        assert!(!d.accept("a", 1, 1000));
        assert!(d.accept("a", 1, 1000 + 10 * DEDUP_WINDOW - 1));
        // Extremes of the sequence space.
        assert!(d.accept("z", 1, u64::MAX));
        assert!(!d.accept("z", 1, u64::MAX));
        assert!(d.accept("z", 1, u64::MAX - 1));
        assert!(!d.accept("z", 1, 0));
    }

    #[test]
    fn dedup_reboot_resets() {
        let mut d = Dedup::default();
        assert!(d.accept("a", 1, 5000));
        assert!(d.accept("a", 2, 1), "restarted sender, seq starts over");
        assert!(!d.accept("a", 2, 1));
        assert!(d.accept("a", 2, 2));
        // The new boot's window does not carry the old one's numbers.
        assert!(d.accept("a", 2, 5000));
        assert!(!d.accept("a", 2, 5000));
    }

    fn name() -> impl Strategy<Value = String> {
        // Includes multi-byte UTF-8 while staying within MAX_NAME_LEN bytes.
        "[a-zA-Z0-9\\-_é]{1,20}"
    }

    fn msg() -> impl Strategy<Value = QuorumMsg> {
        use proptest::collection::vec;
        prop_oneof![
            vec(any::<u8>(), 0..300).prop_map(QuorumMsg::Raft),
            vec((name(), any::<u64>()), 0..5).prop_map(|es| {
                QuorumMsg::Renew(
                    es.into_iter()
                        .map(|(group, epoch)| GroupEpoch { group, epoch })
                        .collect(),
                )
            }),
            vec((name(), any::<u64>(), any::<u64>()), 0..5).prop_map(|es| {
                QuorumMsg::Ack(
                    es.into_iter()
                        .map(|(group, epoch, renewal_sent_ms)| LeaseAck {
                            group,
                            epoch,
                            renewal_sent_ms,
                        })
                        .collect(),
                )
            }),
            vec((name(), any::<u64>(), any::<u64>(), any::<u64>()), 0..5).prop_map(|es| {
                QuorumMsg::Report(
                    es.into_iter()
                        .map(|(group, epoch, since_current_ms, quiet_ms)| LeaseReport {
                            group,
                            epoch,
                            since_current_ms,
                            quiet_ms,
                        })
                        .collect(),
                )
            }),
        ]
    }

    fn packet() -> impl Strategy<Value = QuorumPacket> {
        (
            name(),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::collection::vec(msg(), 0..8),
            (MIN_VERSION..=MAX_VERSION, 0..=MAX_VERSION),
        )
            .prop_map(
                |(from, (voters_digest, boot_id, seq, sent_ms), msgs, (version, extra))| {
                    QuorumPacket {
                        version,
                        max_version: if version == 1 {
                            1
                        } else {
                            version.saturating_add(extra)
                        },
                        cluster: "prod".into(),
                        from,
                        voters_digest,
                        boot_id,
                        seq,
                        sent_ms,
                        msgs,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_round_trip(p in packet()) {
            let pkt = encode(&p, KEY).expect("small packets always encode");
            prop_assert_eq!(decode(&pkt, KEY, "prod"), Ok(p));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            prop_assert!(decode(&bytes, KEY, "prod").is_err());
            // Same with a valid preamble so the MAC check is reached.
            let mut b = b"TDQM\x01".to_vec();
            b.extend_from_slice(&bytes);
            prop_assert!(decode(&b, KEY, "prod").is_err());
        }

        #[test]
        fn signed_bodies_decode_canonically(p in packet(), at in any::<usize>(), byte in any::<u8>()) {
            // Edit one byte of a valid body and re-sign it: whatever still decodes
            // must re-encode to exactly the same bytes.
            let mut body = body_of(&encode(&p, KEY).expect("encode"));
            let at = at % body.len();
            body[at] = byte;
            let signed = resign(&body);
            if let Ok(q) = decode(&signed, KEY, "prod") {
                prop_assert_eq!(encode(&q, KEY), Ok(signed));
            }
        }
    }
}
