//! Heartbeat wire codec: a pure (no I/O) encoder/decoder for the UDP
//! datagrams that cluster nodes exchange on every heartbeat path.
//!
//! # Wire format, versions 1 to 3
//!
//! All integers are big-endian (network byte order, RFC 1700 / RFC 791
//! convention). Strings are a `u8` byte length followed by that many bytes of
//! UTF-8; names are 1..=[`MAX_NAME_LEN`] bytes. Counts are bounded
//! ([`MAX_GROUPS`], [`MAX_NODES`]) and the whole datagram, MAC included, is
//! at most [`MAX_PACKET`] bytes so that it fits in one Ethernet frame without
//! IP fragmentation (1500-byte MTU minus IPv6/UDP headers and some headroom
//! for tunnels/VLANs).
//!
//! ```text
//! magic         4   b"TDHB"
//! version       1   MIN_VERSION..=MAX_VERSION
//! flags         1   bit0 = echo present, bit1 = standby, others must be 0
//! cluster       str
//! node          str
//! boot_id       u64
//! boot_time_ms  u64
//! seq           u64
//! path          u8
//! sent_ms       u64
//! [protocol]        only if version >= 2:
//!   max_version   u8  the sender's MAX_VERSION, >= version
//!   config_digest str 0..=MAX_NAME_LEN bytes, empty: unknown (config::cluster_digest)
//! [echo]            only if flags.bit0:
//!   peer_sent_ms  u64
//!   held_ms       u32
//! priority      u32
//! group_count   u8  <= MAX_GROUPS
//! group * group_count:
//!   name        str
//!   state       u8  0 stopped, 1 starting, 2 running, 3 stopping, 4 failed
//!   gflags      u8  bit0 = blocked, bit1 = maintenance, bit2 = assignment
//!                   present, others must be 0
//!   [assignment]    only if gflags.bit2:
//!     owner     str
//!     epoch     u64
//! setting_count u8  <= MAX_NODES
//! setting * setting_count:     standby register, unique node names
//!   node        str
//!   sflags      u8  bit0 = standby, others must be 0
//!   epoch       u64
//! [mirrors]         optional: present only if the node holds mirrors
//!   mirror_count  u8  1..=MAX_MIRRORS
//!   mirror * mirror_count:      unique names
//!     name        str
//!     outdated    u64 generation this (secondary) copy outdated itself for; 0 none
//!     req_count   u8  <= MAX_NODES
//!     request * req_count:      a primary asks a lost sync peer to outdate
//!       peer      str
//!       generation u64 the primary's current generation
//!   [lags]          only if version >= 3 (and the mirrors section is present):
//!     lag_count   u8  entries that fit the datagram, at most 255
//!     lag * lag_count:          a primary's view of each peer's copy
//!       mirror    str
//!       peer      str
//!       bytes     u64 what the peer's copy may lack: unacknowledged + out of sync
//!       age_ms    u32 age of the oldest write the peer has not acknowledged
//! mac           32  HMAC-SHA256(cluster key, all preceding bytes)
//! ```
//!
//! The MAC is the full, untruncated HMAC-SHA256 tag (RFC 2104, FIPS 198-1;
//! no truncation so RFC 2104 §5's reduced-strength caveat does not apply).
//! [`decode`] checks only the unauthenticated framing (size, magic, version)
//! before verifying the tag in constant time via `hmac::Mac::verify_slice`;
//! body fields are parsed only from authenticated bytes, so the parser never
//! acts on attacker-controlled input from someone without the key. The
//! version byte is covered by the MAC, preventing downgrade by rewriting it.
//!
//! Replay protection (sequence numbers, boots) is not a codec concern; see
//! the membership module.
//!
//! # Versions
//!
//! The decoder accepts every version in [`MIN_VERSION`]..=[`MAX_VERSION`]; version 1
//! has no protocol section (it decodes as `max_version` 1 and no digest), version 2
//! has no lags, and every version from 3 up encodes the same way (the `proto-next` feature raises
//! [`MAX_VERSION`] by one, for the mixed-build lab test). A sender encodes each peer's
//! heartbeats at [`version_for`] that peer: its own maximum until it has heard the
//! peer, then the lower of the two maxima. A peer of an older build drops the first
//! heartbeats as `bad_version`, and is answered in its own version from the first
//! heartbeat it sends; starting at the minimum instead would never learn anything, as
//! version 1 cannot carry a maximum.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Maximum encoded datagram size in bytes, MAC included.
pub const MAX_PACKET: usize = 1400;
/// Magic bytes at the start of every heartbeat ("TanDem HeartBeat").
pub const MAGIC: [u8; 4] = *b"TDHB";
/// The oldest wire format version this codec reads and writes.
pub const MIN_VERSION: u8 = 1;
/// The newest wire format version this codec reads and writes.
pub const MAX_VERSION: u8 = if cfg!(feature = "proto-next") { 4 } else { 3 };
/// The first version that carries a primary's lag toward each peer.
pub const LAGS_VERSION: u8 = 3;
/// Length of the trailing HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Maximum byte length of any name (cluster, node, group, owner, standby
/// setting node).
pub const MAX_NAME_LEN: usize = 64;
/// Maximum number of groups in one advert.
pub const MAX_GROUPS: usize = 32;
/// Maximum number of standby register settings (one per node) in one advert.
pub const MAX_NODES: usize = 32;
/// Maximum number of mirror registers in one advert.
pub const MAX_MIRRORS: usize = 8;

const FLAG_ECHO: u8 = 0x01;
const FLAG_STANDBY: u8 = 0x02;
const GFLAG_BLOCKED: u8 = 0x01;
const GFLAG_MAINTENANCE: u8 = 0x02;
const GFLAG_ASSIGNMENT: u8 = 0x04;
const SFLAG_STANDBY: u8 = 0x01;

/// magic + version: the part inspected before anything else.
const PREAMBLE_LEN: usize = MAGIC.len() + 1;
/// Smallest possibly valid datagram: 1-byte names, no echo, no groups, no
/// standby settings.
pub const MIN_PACKET: usize = PREAMBLE_LEN
    + 1 // flags
    + 2 // cluster (len + 1 byte)
    + 2 // node
    + 8 * 3 // boot_id, boot_time_ms, seq
    + 1 // path
    + 8 // sent_ms
    + 4 // priority
    + 1 // group_count
    + 1 // setting_count
    + MAC_LEN;

/// The version to encode for a peer whose heartbeats advertised `peer_max` (`None`:
/// not heard yet): the lower of the two maxima, this build's maximum until then.
/// Shared by the quorum datagram (`quorum::wire`).
pub fn version_for(own_max: u8, peer_max: Option<u8>) -> u8 {
    peer_max.map_or(own_max, |p| p.min(own_max))
}

/// One heartbeat datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The wire version this datagram is (to be) encoded in.
    pub version: u8,
    /// The sender's newest version ([`MAX_VERSION`]); 1 for a version-1 datagram.
    pub max_version: u8,
    /// The sender's configuration digest (`config::cluster_digest`); empty in version 1
    /// or unknown.
    pub config_digest: String,
    /// Cluster name; a mismatch is [`DecodeError::WrongCluster`].
    pub cluster: String,
    /// Sender node name.
    pub node: String,
    /// Random per daemon start.
    pub boot_id: u64,
    /// Sender's unix time in ms when the daemon started; orders boots.
    pub boot_time_ms: u64,
    /// Per sender, strictly increasing over all paths, across packets.
    pub seq: u64,
    /// Index of the heartbeat path this packet was sent on.
    pub path: u8,
    /// Sender's monotonic clock in ms when sent.
    pub sent_ms: u64,
    /// Latest packet the sender received from the receiver on this path, for RTT.
    pub echo: Option<Echo>,
    /// The sender's placement state.
    pub advert: NodeAdvert,
}

/// Echo of the receiver's `sent_ms`, plus how long the sender held it before
/// sending this packet, so the receiver can compute a round-trip time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    /// The `sent_ms` of the packet being echoed (receiver's monotonic clock).
    pub peer_sent_ms: u64,
    /// Time between receiving that packet and sending this one.
    pub held_ms: u32,
}

/// A node's placement state, as advertised to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAdvert {
    /// Placement priority of this node.
    pub priority: u32,
    /// Standby nodes host nothing.
    pub standby: bool,
    /// Per-group state, at most [`MAX_GROUPS`], unique names.
    pub groups: Vec<GroupAdvert>,
    /// The advertising node's view of every node's standby register (last
    /// writer wins by epoch); lets `tandem node standby NODE` run on any
    /// node. At most [`MAX_NODES`] settings, unique node names; order is
    /// preserved on the wire.
    pub standby_register: Vec<StandbySetting>,
    /// The mirror fencing register: outdate requests from a primary and the
    /// acknowledgements of secondaries. At most [`MAX_MIRRORS`], unique names.
    pub mirrors: Vec<MirrorRegister>,
    /// As a primary: how far behind each peer's copy is (version 3 and up, sent only
    /// with a mirrors section, and only as many as fit the datagram). A DR copy keeps
    /// the last one it heard as its recovery point.
    pub lags: Vec<MirrorLag>,
}

/// A primary's view of one peer's copy of one mirror, as of the heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorLag {
    pub mirror: String,
    pub peer: String,
    /// Bytes the peer's copy may lack: written here and not acknowledged, plus what
    /// its bitmap holds out of sync.
    pub bytes: u64,
    /// Age of the oldest write the peer has not acknowledged, in ms (saturating).
    pub age_ms: u32,
}

impl MirrorLag {
    pub fn new(mirror: &str, peer: &str, bytes: u64, age_ms: u32) -> Self {
        MirrorLag {
            mirror: mirror.to_string(),
            peer: peer.to_string(),
            bytes,
            age_ms,
        }
    }
}

impl NodeAdvert {
    /// Whether two adverts differ in anything but the lags, which change with every
    /// write and go out with the next periodic heartbeat only.
    pub fn differs_beyond_lags(&self, other: &NodeAdvert) -> bool {
        self.priority != other.priority
            || self.standby != other.standby
            || self.groups != other.groups
            || self.standby_register != other.standby_register
            || self.mirrors != other.mirrors
    }
}

/// One mirror's part of the advert. A sync primary that loses its replication link to
/// a peer holds writes and asks that peer (through heartbeats, which may still get
/// through) to mark its copy Outdated; the peer answers by advertising the generation
/// it outdated itself for. Only then (or once the peer is declared dead) do writes go on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorRegister {
    pub name: String,
    /// As a secondary: the primary generation this copy outdated itself for (0: none).
    pub outdated: u64,
    /// As a primary: (peer, my current generation) for each lost sync peer.
    pub outdate_requests: Vec<(String, u64)>,
}

/// One entry of the replicated standby register: whether `node` should be in
/// standby, as last written at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandbySetting {
    /// The node the setting applies to.
    pub node: String,
    /// Whether that node should be in standby (host nothing).
    pub standby: bool,
    /// Write epoch; the highest epoch wins when merging registers.
    pub epoch: u64,
}

/// One resource group's state as seen by the advertising node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAdvert {
    /// Group name.
    pub name: String,
    /// Local state of the group on the advertising node (a `u8` on the wire).
    pub local: LocalGroupState,
    /// This node exhausted its restarts for the group: not eligible.
    pub blocked: bool,
    /// The group is in maintenance mode (unmanaged).
    pub maintenance: bool,
    /// Who the advertising node believes owns the group.
    pub assignment: Option<Assignment>,
}

/// Local lifecycle state of a group on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalGroupState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl LocalGroupState {
    /// The snake_case name (as in the JSON).
    pub fn name(self) -> &'static str {
        match self {
            LocalGroupState::Stopped => "stopped",
            LocalGroupState::Starting => "starting",
            LocalGroupState::Running => "running",
            LocalGroupState::Stopping => "stopping",
            LocalGroupState::Failed => "failed",
        }
    }

    /// Wire value of the state.
    pub fn to_wire(self) -> u8 {
        match self {
            LocalGroupState::Stopped => 0,
            LocalGroupState::Starting => 1,
            LocalGroupState::Running => 2,
            LocalGroupState::Stopping => 3,
            LocalGroupState::Failed => 4,
        }
    }

    /// Parses a wire value; `None` for unknown values.
    pub fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0 => LocalGroupState::Stopped,
            1 => LocalGroupState::Starting,
            2 => LocalGroupState::Running,
            3 => LocalGroupState::Stopping,
            4 => LocalGroupState::Failed,
            _ => return None,
        })
    }
}

/// Ownership of a group: owner node and a fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// Owning node name.
    pub owner: String,
    /// Monotonic assignment epoch.
    pub epoch: u64,
}

/// Why a heartbeat could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded datagram would exceed [`MAX_PACKET`].
    #[error("encoded heartbeat is {len} bytes, limit is {MAX_PACKET}")]
    TooLarge { len: usize },
    /// A name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("{field} must be 1..={MAX_NAME_LEN} bytes, got {len}")]
    BadName { field: &'static str, len: usize },
    /// More than [`MAX_GROUPS`] groups.
    #[error("{count} groups in advert, limit is {MAX_GROUPS}")]
    TooManyGroups { count: usize },
    /// Two groups share a name.
    #[error("duplicate group {0:?} in advert")]
    DuplicateGroup(String),
    /// More than [`MAX_NODES`] standby register settings.
    #[error("{count} standby settings in advert, limit is {MAX_NODES}")]
    TooManyStandbySettings { count: usize },
    /// Two standby register settings name the same node.
    #[error("duplicate standby setting for node {0:?} in advert")]
    DuplicateStandbySetting(String),
    /// Too many mirrors, a bad or duplicate mirror name, or too many outdate requests.
    #[error("bad mirror register: {0}")]
    BadMirrors(String),
    /// An empty key authenticates nothing; refuse to send.
    #[error("cluster key is empty")]
    EmptyKey,
    /// The version is outside [`MIN_VERSION`]..=[`MAX_VERSION`], or above `max_version`.
    #[error("cannot encode heartbeat version {version} (max {max}; this build {MIN_VERSION}..={MAX_VERSION})")]
    BadVersion { version: u8, max: u8 },
    /// The config digest is longer than [`MAX_NAME_LEN`] bytes.
    #[error("config digest of {0} bytes, limit is {MAX_NAME_LEN}")]
    BadDigest(usize),
}

/// Why a datagram was rejected. See [`DecodeError::reason`] for metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_PACKET`].
    #[error("datagram of {len} bytes exceeds {MAX_PACKET}")]
    TooLarge { len: usize },
    /// Shorter than the smallest possible heartbeat.
    #[error("datagram of {len} bytes is shorter than the minimum {need}")]
    Truncated { len: usize, need: usize },
    /// Does not start with [`MAGIC`]: not a Tandem heartbeat.
    #[error("bad magic")]
    BadMagic,
    /// Unsupported wire version.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// MAC verification failed (wrong key, corruption or forgery), or the
    /// local key is empty.
    #[error("message authentication failed")]
    BadMac,
    /// Authenticated but structurally invalid body.
    #[error("malformed heartbeat: {0}")]
    Malformed(&'static str),
    /// Authenticated, well-formed, but for another cluster.
    #[error("heartbeat for cluster {got:?}, expected {expected:?}")]
    WrongCluster { expected: String, got: String },
}

impl DecodeError {
    /// Short snake_case label, stable for use as a metrics/counter label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::BadMac => "bad_mac",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::WrongCluster { .. } => "wrong_cluster",
        }
    }
}

fn new_mac(key: &[u8]) -> Option<HmacSha256> {
    if key.is_empty() {
        return None;
    }
    // HMAC accepts keys of any length (RFC 2104 §2), so this cannot fail;
    // still mapped rather than unwrapped.
    <HmacSha256 as Mac>::new_from_slice(key).ok()
}

fn check_name(field: &'static str, s: &str) -> Result<(), EncodeError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(EncodeError::BadName {
            field,
            len: s.len(),
        });
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Length checked by check_name to be <= MAX_NAME_LEN < 256.
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes and authenticates a heartbeat under `key`.
pub fn encode(hb: &Heartbeat, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut mac = new_mac(key).ok_or(EncodeError::EmptyKey)?;
    check_name("cluster", &hb.cluster)?;
    check_name("node", &hb.node)?;
    check_groups(&hb.advert.groups)?;
    check_standby_register(&hb.advert.standby_register)?;
    check_mirrors(&hb.advert.mirrors)?;
    check_protocol(hb)?;

    let mut out = Vec::with_capacity(256);
    put_header(&mut out, hb);
    if hb.version >= 2 {
        out.push(hb.max_version);
        out.push(hb.config_digest.len() as u8);
        out.extend_from_slice(hb.config_digest.as_bytes());
    }
    if let Some(e) = &hb.echo {
        put_echo(&mut out, e);
    }
    out.extend_from_slice(&hb.advert.priority.to_be_bytes());
    put_groups(&mut out, &hb.advert.groups);
    put_standby_register(&mut out, &hb.advert.standby_register);
    put_mirrors(&mut out, &hb.advert.mirrors);
    if hb.version >= LAGS_VERSION && !hb.advert.mirrors.is_empty() {
        put_lags(&mut out, &hb.advert.lags);
    }
    let len = out.len() + MAC_LEN;
    if len > MAX_PACKET {
        return Err(EncodeError::TooLarge { len });
    }
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// Checks the groups section before encoding: at most [`MAX_GROUPS`], valid
/// group and owner names, unique group names.
/// The version is one this build speaks and the sender's maximum covers; the digest
/// fits its length byte.
fn check_protocol(hb: &Heartbeat) -> Result<(), EncodeError> {
    let known = (MIN_VERSION..=MAX_VERSION).contains(&hb.version);
    if !known || hb.version > hb.max_version {
        return Err(EncodeError::BadVersion {
            version: hb.version,
            max: hb.max_version,
        });
    }
    if hb.config_digest.len() > MAX_NAME_LEN {
        return Err(EncodeError::BadDigest(hb.config_digest.len()));
    }
    Ok(())
}

fn check_groups(groups: &[GroupAdvert]) -> Result<(), EncodeError> {
    if groups.len() > MAX_GROUPS {
        return Err(EncodeError::TooManyGroups {
            count: groups.len(),
        });
    }
    for (i, g) in groups.iter().enumerate() {
        check_name("group name", &g.name)?;
        if let Some(a) = &g.assignment {
            check_name("assignment owner", &a.owner)?;
        }
        if groups[..i].iter().any(|o| o.name == g.name) {
            return Err(EncodeError::DuplicateGroup(g.name.clone()));
        }
    }
    Ok(())
}

/// Checks the standby register before encoding: at most [`MAX_NODES`]
/// settings, valid and unique node names.
fn check_standby_register(settings: &[StandbySetting]) -> Result<(), EncodeError> {
    if settings.len() > MAX_NODES {
        return Err(EncodeError::TooManyStandbySettings {
            count: settings.len(),
        });
    }
    for (i, s) in settings.iter().enumerate() {
        check_name("standby setting node", &s.node)?;
        if settings[..i].iter().any(|o| o.node == s.node) {
            return Err(EncodeError::DuplicateStandbySetting(s.node.clone()));
        }
    }
    Ok(())
}

/// Checks the mirror registers before encoding: at most [`MAX_MIRRORS`],
/// valid and unique names, at most [`MAX_NODES`] outdate requests each with
/// a valid peer name.
fn check_mirrors(mirrors: &[MirrorRegister]) -> Result<(), EncodeError> {
    if mirrors.len() > MAX_MIRRORS {
        return Err(EncodeError::BadMirrors(format!(
            "{} mirrors, limit is {MAX_MIRRORS}",
            mirrors.len()
        )));
    }
    for (i, m) in mirrors.iter().enumerate() {
        check_name("mirror name", &m.name)?;
        if mirrors[..i].iter().any(|o| o.name == m.name) {
            return Err(EncodeError::BadMirrors(format!(
                "duplicate mirror {:?}",
                m.name
            )));
        }
        if m.outdate_requests.len() > MAX_NODES {
            return Err(EncodeError::BadMirrors(format!(
                "{} outdate requests for {:?}",
                m.outdate_requests.len(),
                m.name
            )));
        }
        for (peer, _) in &m.outdate_requests {
            check_name("outdate request peer", peer)?;
        }
    }
    Ok(())
}

/// Writes the header: magic, version, flags, cluster and node names, boot
/// identity, sequence number, path and send time.
fn put_header(out: &mut Vec<u8>, hb: &Heartbeat) {
    out.extend_from_slice(&MAGIC);
    out.push(hb.version);
    let mut flags = 0;
    if hb.echo.is_some() {
        flags |= FLAG_ECHO;
    }
    if hb.advert.standby {
        flags |= FLAG_STANDBY;
    }
    out.push(flags);
    put_str(out, &hb.cluster);
    put_str(out, &hb.node);
    out.extend_from_slice(&hb.boot_id.to_be_bytes());
    out.extend_from_slice(&hb.boot_time_ms.to_be_bytes());
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.push(hb.path);
    out.extend_from_slice(&hb.sent_ms.to_be_bytes());
}

/// Writes the optional echo section (present when the header's echo flag is set).
fn put_echo(out: &mut Vec<u8>, e: &Echo) {
    out.extend_from_slice(&e.peer_sent_ms.to_be_bytes());
    out.extend_from_slice(&e.held_ms.to_be_bytes());
}

/// Writes the group count and every group; `groups` was checked by
/// [`check_groups`].
fn put_groups(out: &mut Vec<u8>, groups: &[GroupAdvert]) {
    // Bounded by MAX_GROUPS < 256 in check_groups.
    out.push(groups.len() as u8);
    for g in groups {
        put_str(out, &g.name);
        out.push(g.local.to_wire());
        let mut gf = 0;
        if g.blocked {
            gf |= GFLAG_BLOCKED;
        }
        if g.maintenance {
            gf |= GFLAG_MAINTENANCE;
        }
        if g.assignment.is_some() {
            gf |= GFLAG_ASSIGNMENT;
        }
        out.push(gf);
        if let Some(a) = &g.assignment {
            put_str(out, &a.owner);
            out.extend_from_slice(&a.epoch.to_be_bytes());
        }
    }
}

/// Writes the setting count and every standby register setting; `settings`
/// was checked by [`check_standby_register`].
fn put_standby_register(out: &mut Vec<u8>, settings: &[StandbySetting]) {
    // Bounded by MAX_NODES < 256 in check_standby_register.
    out.push(settings.len() as u8);
    for s in settings {
        put_str(out, &s.node);
        out.push(if s.standby { SFLAG_STANDBY } else { 0 });
        out.extend_from_slice(&s.epoch.to_be_bytes());
    }
}

/// Writes the optional mirrors section, omitted entirely when there are no
/// mirrors; `mirrors` was checked by [`check_mirrors`].
fn put_mirrors(out: &mut Vec<u8>, mirrors: &[MirrorRegister]) {
    if mirrors.is_empty() {
        return;
    }
    // Bounded by MAX_MIRRORS and MAX_NODES < 256 in check_mirrors.
    out.push(mirrors.len() as u8);
    for m in mirrors {
        put_str(out, &m.name);
        out.extend_from_slice(&m.outdated.to_be_bytes());
        out.push(m.outdate_requests.len() as u8);
        for (peer, generation) in &m.outdate_requests {
            put_str(out, peer);
            out.extend_from_slice(&generation.to_be_bytes());
        }
    }
}

/// Writes the lags section: as many entries as fit the datagram (they are advice, and
/// the heartbeat itself must go out), each with valid names.
fn put_lags(out: &mut Vec<u8>, lags: &[MirrorLag]) {
    let at = out.len();
    out.push(0);
    let mut count = 0u8;
    for l in lags {
        let valid = |n: &str| (1..=MAX_NAME_LEN).contains(&n.len());
        let len = 2 + l.mirror.len() + l.peer.len() + 8 + 4;
        if !valid(&l.mirror) || !valid(&l.peer) || out.len() + len + MAC_LEN > MAX_PACKET {
            continue;
        }
        put_str(out, &l.mirror);
        put_str(out, &l.peer);
        out.extend_from_slice(&l.bytes.to_be_bytes());
        out.extend_from_slice(&l.age_ms.to_be_bytes());
        count += 1;
        if count == u8::MAX {
            break;
        }
    }
    out[at] = count;
}

/// Bounds-checked cursor over the authenticated body. Every read returns
/// `Malformed` instead of panicking when the body is too short.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const OVERRUN: DecodeError = DecodeError::Malformed("field runs past end of body");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(OVERRUN)?;
        let s = self.buf.get(self.pos..end).ok_or(OVERRUN)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| OVERRUN)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn name(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(DecodeError::Malformed(what));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Malformed("name is not valid UTF-8"))
    }

    /// Whether the whole body has been read.
    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Reads the header flags, refusing unknown bits.
    fn header_flags(&mut self) -> Result<u8, DecodeError> {
        let flags = self.u8()?;
        if flags & !(FLAG_ECHO | FLAG_STANDBY) != 0 {
            return Err(DecodeError::Malformed("unknown header flags"));
        }
        Ok(flags)
    }

    /// Reads the echo section if the header `flags` say it is present.
    /// The protocol section: (max_version, config_digest); implied in version 1.
    fn protocol(&mut self, version: u8) -> Result<(u8, String), DecodeError> {
        if version < 2 {
            return Ok((1, String::new()));
        }
        let max = self.u8()?;
        if max < version {
            return Err(DecodeError::Malformed("max_version below version"));
        }
        let len = self.u8()? as usize;
        if len > MAX_NAME_LEN {
            return Err(DecodeError::Malformed("bad config digest length"));
        }
        let digest = std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("config digest is not UTF-8"))?;
        Ok((max, digest.to_owned()))
    }

    fn echo(&mut self, flags: u8) -> Result<Option<Echo>, DecodeError> {
        if flags & FLAG_ECHO == 0 {
            return Ok(None);
        }
        Ok(Some(Echo {
            peer_sent_ms: self.u64()?,
            held_ms: self.u32()?,
        }))
    }

    /// Reads the group count and that many groups with unique names.
    fn groups(&mut self) -> Result<Vec<GroupAdvert>, DecodeError> {
        let count = usize::from(self.u8()?);
        if count > MAX_GROUPS {
            return Err(DecodeError::Malformed("too many groups"));
        }
        let mut groups: Vec<GroupAdvert> = Vec::with_capacity(count);
        for _ in 0..count {
            let group = self.group(&groups)?;
            groups.push(group);
        }
        Ok(groups)
    }

    /// Reads one group, refusing a name already in `seen`.
    fn group(&mut self, seen: &[GroupAdvert]) -> Result<GroupAdvert, DecodeError> {
        let name = self.name("bad group name length")?;
        if seen.iter().any(|g| g.name == name) {
            return Err(DecodeError::Malformed("duplicate group"));
        }
        let local = LocalGroupState::from_wire(self.u8()?)
            .ok_or(DecodeError::Malformed("unknown group state"))?;
        let gf = self.u8()?;
        if gf & !(GFLAG_BLOCKED | GFLAG_MAINTENANCE | GFLAG_ASSIGNMENT) != 0 {
            return Err(DecodeError::Malformed("unknown group flags"));
        }
        let assignment = if gf & GFLAG_ASSIGNMENT != 0 {
            Some(Assignment {
                owner: self.name("bad owner name length")?,
                epoch: self.u64()?,
            })
        } else {
            None
        };
        Ok(GroupAdvert {
            name,
            local,
            blocked: gf & GFLAG_BLOCKED != 0,
            maintenance: gf & GFLAG_MAINTENANCE != 0,
            assignment,
        })
    }

    /// Reads the setting count and that many standby register settings with
    /// unique node names.
    fn standby_register(&mut self) -> Result<Vec<StandbySetting>, DecodeError> {
        let count = usize::from(self.u8()?);
        if count > MAX_NODES {
            return Err(DecodeError::Malformed("too many standby settings"));
        }
        let mut standby_register: Vec<StandbySetting> = Vec::with_capacity(count);
        for _ in 0..count {
            let node = self.name("bad standby setting node name length")?;
            if standby_register.iter().any(|s| s.node == node) {
                return Err(DecodeError::Malformed("duplicate standby setting"));
            }
            let sf = self.u8()?;
            if sf & !SFLAG_STANDBY != 0 {
                return Err(DecodeError::Malformed("unknown standby setting flags"));
            }
            standby_register.push(StandbySetting {
                node,
                standby: sf & SFLAG_STANDBY != 0,
                epoch: self.u64()?,
            });
        }
        Ok(standby_register)
    }

    /// Reads the optional mirrors section: empty if the body ends here,
    /// otherwise 1..=[`MAX_MIRRORS`] mirrors with unique names.
    fn mirrors(&mut self) -> Result<Vec<MirrorRegister>, DecodeError> {
        let mut mirrors: Vec<MirrorRegister> = Vec::new();
        if self.at_end() {
            return Ok(mirrors);
        }
        let count = usize::from(self.u8()?);
        if count == 0 || count > MAX_MIRRORS {
            return Err(DecodeError::Malformed("bad mirror count"));
        }
        for _ in 0..count {
            let mirror = self.mirror(&mirrors)?;
            mirrors.push(mirror);
        }
        Ok(mirrors)
    }

    /// Reads one mirror register, refusing a name already in `seen`.
    fn mirror(&mut self, seen: &[MirrorRegister]) -> Result<MirrorRegister, DecodeError> {
        let name = self.name("bad mirror name length")?;
        if seen.iter().any(|m| m.name == name) {
            return Err(DecodeError::Malformed("duplicate mirror"));
        }
        let outdated = self.u64()?;
        let n = usize::from(self.u8()?);
        if n > MAX_NODES {
            return Err(DecodeError::Malformed("too many outdate requests"));
        }
        let mut outdate_requests = Vec::with_capacity(n);
        for _ in 0..n {
            let peer = self.name("bad outdate request peer length")?;
            outdate_requests.push((peer, self.u64()?));
        }
        Ok(MirrorRegister {
            name,
            outdated,
            outdate_requests,
        })
    }

    /// Reads the lags section (version 3 and up, after a mirrors section).
    fn lags(&mut self) -> Result<Vec<MirrorLag>, DecodeError> {
        let count = usize::from(self.u8()?);
        let mut lags = Vec::with_capacity(count);
        for _ in 0..count {
            lags.push(MirrorLag {
                mirror: self.name("bad lag mirror name length")?,
                peer: self.name("bad lag peer name length")?,
                bytes: self.u64()?,
                age_ms: self.u32()?,
            });
        }
        Ok(lags)
    }
}

/// Verifies and decodes one datagram. `cluster` is the local cluster name.
///
/// Check order: size, magic, version (unauthenticated framing), then the MAC
/// in constant time, then the body. Never panics on any input.
pub fn decode(buf: &[u8], key: &[u8], cluster: &str) -> Result<Heartbeat, DecodeError> {
    check_framing(buf)?;
    let signed = authenticate(buf, key)?;
    let mut r = Reader {
        buf: signed,
        pos: PREAMBLE_LEN,
    };
    let flags = r.header_flags()?;
    let got_cluster = r.name("bad cluster name length")?;
    let node = r.name("bad node name length")?;
    let boot_id = r.u64()?;
    let boot_time_ms = r.u64()?;
    let seq = r.u64()?;
    let path = r.u8()?;
    let sent_ms = r.u64()?;
    let version = signed[MAGIC.len()];
    let (max_version, config_digest) = r.protocol(version)?;
    let echo = r.echo(flags)?;
    let priority = r.u32()?;
    let groups = r.groups()?;
    let standby_register = r.standby_register()?;
    let mirrors = r.mirrors()?;
    let lags = if version >= LAGS_VERSION && !mirrors.is_empty() {
        r.lags()?
    } else {
        Vec::new()
    };
    if !r.at_end() {
        return Err(DecodeError::Malformed("trailing bytes after body"));
    }
    if got_cluster != cluster {
        return Err(DecodeError::WrongCluster {
            expected: cluster.to_owned(),
            got: got_cluster,
        });
    }
    Ok(Heartbeat {
        version,
        max_version,
        config_digest,
        cluster: got_cluster,
        node,
        boot_id,
        boot_time_ms,
        seq,
        path,
        sent_ms,
        echo,
        advert: NodeAdvert {
            priority,
            standby: flags & FLAG_STANDBY != 0,
            groups,
            standby_register,
            mirrors,
            lags,
        },
    })
}

/// Checks the unauthenticated framing, in order: size limit, magic, version,
/// minimum size.
fn check_framing(buf: &[u8]) -> Result<(), DecodeError> {
    if buf.len() > MAX_PACKET {
        return Err(DecodeError::TooLarge { len: buf.len() });
    }
    let Some((preamble, _)) = buf.split_first_chunk::<PREAMBLE_LEN>() else {
        return Err(DecodeError::Truncated {
            len: buf.len(),
            need: MIN_PACKET,
        });
    };
    if preamble[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = preamble[MAGIC.len()];
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Err(DecodeError::BadVersion(version));
    }
    if buf.len() < MIN_PACKET {
        return Err(DecodeError::Truncated {
            len: buf.len(),
            need: MIN_PACKET,
        });
    }
    Ok(())
}

/// Verifies the trailing MAC of a framed datagram (at least [`MIN_PACKET`]
/// bytes) and returns the authenticated bytes before it.
fn authenticate<'a>(buf: &'a [u8], key: &[u8]) -> Result<&'a [u8], DecodeError> {
    let (signed, tag) = buf.split_at(buf.len() - MAC_LEN);
    let mut mac = new_mac(key).ok_or(DecodeError::BadMac)?;
    mac.update(signed);
    // Constant-time comparison (subtle::ConstantTimeEq inside hmac) so the
    // tag cannot be recovered byte by byte through timing.
    mac.verify_slice(tag).map_err(|_| DecodeError::BadMac)?;
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"test-cluster-key";

    fn sample() -> Heartbeat {
        Heartbeat {
            version: 1,
            max_version: 1,
            config_digest: String::new(),
            cluster: "prod".into(),
            node: "a".into(),
            boot_id: 0x0102_0304_0506_0708,
            boot_time_ms: 1_700_000_000_000,
            seq: 42,
            path: 1,
            sent_ms: 5000,
            echo: Some(Echo {
                peer_sent_ms: 4900,
                held_ms: 7,
            }),
            advert: NodeAdvert {
                priority: 100,
                standby: false,
                groups: vec![GroupAdvert {
                    name: "db".into(),
                    local: LocalGroupState::Running,
                    blocked: false,
                    maintenance: true,
                    assignment: Some(Assignment {
                        owner: "a".into(),
                        epoch: 3,
                    }),
                }],
                standby_register: vec![StandbySetting {
                    node: "b".into(),
                    standby: true,
                    epoch: 9,
                }],
                mirrors: Vec::new(),
                lags: Vec::new(),
            },
        }
    }

    #[test]
    fn lags_travel_from_version_3_with_a_mirrors_section_only() {
        let mut hb = sample();
        hb.advert.mirrors = vec![MirrorRegister {
            name: "data".into(),
            ..MirrorRegister::default()
        }];
        hb.advert.lags = vec![
            MirrorLag::new("data", "b", 1 << 40, 1234),
            MirrorLag::new("data", "c", 0, 0),
        ];
        (hb.version, hb.max_version) = (MAX_VERSION, MAX_VERSION);
        let bytes = encode(&hb, KEY).expect("encode");
        assert_eq!(decode(&bytes, KEY, "prod").expect("decode"), hb);
        // Version 2 has no lags section: a peer of the older build decodes the rest.
        hb.version = 2;
        let v2 = decode(&encode(&hb, KEY).expect("encode"), KEY, "prod").expect("decode");
        assert!(v2.advert.lags.is_empty());
        assert_eq!(v2.advert.mirrors, hb.advert.mirrors);
        // Without mirrors there is no section to follow, so no lags either.
        hb.version = MAX_VERSION;
        hb.advert.mirrors.clear();
        let bare = decode(&encode(&hb, KEY).expect("encode"), KEY, "prod").expect("decode");
        assert!(bare.advert.lags.is_empty());
    }

    #[test]
    fn lags_that_do_not_fit_are_left_out_and_the_heartbeat_still_goes() {
        let mut hb = sample();
        hb.advert.mirrors = vec![MirrorRegister {
            name: "data".into(),
            ..MirrorRegister::default()
        }];
        (hb.version, hb.max_version) = (MAX_VERSION, MAX_VERSION);
        let long = "p".repeat(MAX_NAME_LEN);
        hb.advert.lags = (0..40)
            .map(|i| {
                MirrorLag::new(
                    &"m".repeat(MAX_NAME_LEN - 2),
                    &format!("{long}{i}")[..MAX_NAME_LEN],
                    i,
                    0,
                )
            })
            .collect();
        // An entry with an invalid name is skipped too.
        hb.advert.lags.insert(0, MirrorLag::new("", "b", 1, 1));
        let bytes = encode(&hb, KEY).expect("the heartbeat must go out");
        assert!(bytes.len() <= MAX_PACKET);
        let got = decode(&bytes, KEY, "prod").expect("decode").advert.lags;
        assert!(!got.is_empty() && got.len() < 40, "{} lags kept", got.len());
        assert_eq!(got[..], hb.advert.lags[1..=got.len()]);
    }

    #[test]
    fn mirror_registers_round_trip_and_are_optional() {
        let mut hb = sample();
        let plain = encode(&hb, KEY).expect("encode");
        hb.advert.mirrors = vec![
            MirrorRegister {
                name: "data".into(),
                outdated: 0,
                outdate_requests: vec![("b".into(), 0xdead_beef), ("c".into(), 1)],
            },
            MirrorRegister {
                name: "logs".into(),
                outdated: 42,
                outdate_requests: vec![],
            },
        ];
        let bytes = encode(&hb, KEY).expect("encode");
        assert!(bytes.len() > plain.len());
        assert_eq!(decode(&bytes, KEY, "prod").expect("decode"), hb);
        // Without mirrors the section is absent: the datagram is what it always was.
        assert!(decode(&plain, KEY, "prod")
            .expect("decode")
            .advert
            .mirrors
            .is_empty());
    }

    #[test]
    fn mirror_register_limits() {
        let mut hb = sample();
        hb.advert.mirrors = (0..MAX_MIRRORS + 1)
            .map(|i| MirrorRegister {
                name: format!("m{i}"),
                ..MirrorRegister::default()
            })
            .collect();
        assert!(matches!(encode(&hb, KEY), Err(EncodeError::BadMirrors(_))));
        hb.advert.mirrors = vec![
            MirrorRegister {
                name: "m".into(),
                ..MirrorRegister::default()
            };
            2
        ];
        assert!(matches!(encode(&hb, KEY), Err(EncodeError::BadMirrors(_))));
        // A zero mirror count in an authenticated body is malformed.
        let plain = encode(&sample(), KEY).expect("encode");
        let mut body = plain[..plain.len() - MAC_LEN].to_vec();
        body.push(0);
        assert!(matches!(
            decode(&resign(&body), KEY, "prod"),
            Err(DecodeError::Malformed(_))
        ));
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

    #[test]
    fn golden_encoding() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let body = concat!(
            "54444842",         // magic "TDHB"
            "01",               // version
            "01",               // flags: echo
            "0470726f64",       // "prod"
            "0161",             // "a"
            "0102030405060708", // boot_id
            "0000018bcfe56800", // boot_time_ms 1_700_000_000_000
            "000000000000002a", // seq 42
            "01",               // path
            "0000000000001388", // sent_ms 5000
            "0000000000001324", // echo.peer_sent_ms 4900
            "00000007",         // echo.held_ms
            "00000064",         // priority 100
            "01",               // 1 group
            "026462",           // "db"
            "02",               // running
            "06",               // maintenance | assignment
            "0161",             // owner "a"
            "0000000000000003", // epoch
            "01",               // 1 standby setting
            "0162",             // node "b"
            "01",               // sflags: standby
            "0000000000000009", // epoch
        );
        assert_eq!(hex(&body_of(&pkt)), body);
        // HMAC-SHA256(KEY, body), cross-checked with an independent HMAC
        // implementation (Python's hmac module) when this vector was pinned.
        assert_eq!(
            hex(&pkt[pkt.len() - MAC_LEN..]),
            "31175de9d6c55916f5b262f69080603fdc297bb593b773cd1446576eff7d3b84",
        );
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(sample()));
    }

    #[test]
    fn round_trip_minimal_and_full() {
        let mut hb = sample();
        hb.echo = None;
        hb.advert = NodeAdvert::default();
        let pkt = encode(&hb, KEY).expect("encode");
        assert_eq!(pkt.len(), MIN_PACKET + "prod".len() - 1);
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb));
        let mut hb = sample();
        hb.advert.standby = true;
        hb.advert.groups[0].blocked = true;
        hb.advert.groups[0].assignment = None;
        hb.advert.groups[0].local = LocalGroupState::Failed;
        hb.advert.standby_register[0].standby = false;
        hb.advert.standby_register.push(StandbySetting {
            node: "a".into(),
            standby: true,
            epoch: u64::MAX,
        });
        let pkt = encode(&hb, KEY).expect("encode");
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb));
    }

    #[test]
    fn wrong_key_is_bad_mac() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let e = decode(&pkt, b"other-key", "prod").unwrap_err();
        assert_eq!(e, DecodeError::BadMac);
        assert_eq!(e.reason(), "bad_mac");
        assert_eq!(decode(&pkt, b"", "prod"), Err(DecodeError::BadMac));
        assert_eq!(encode(&sample(), b""), Err(EncodeError::EmptyKey));
    }

    #[test]
    fn wrong_cluster() {
        let pkt = encode(&sample(), KEY).expect("encode");
        let e = decode(&pkt, KEY, "staging").unwrap_err();
        assert_eq!(e.reason(), "wrong_cluster");
        assert_eq!(
            e,
            DecodeError::WrongCluster {
                expected: "staging".into(),
                got: "prod".into()
            }
        );
    }

    #[test]
    fn truncation() {
        let pkt = encode(&sample(), KEY).expect("encode");
        for n in 0..pkt.len() {
            let e = decode(&pkt[..n], KEY, "prod").unwrap_err();
            let want = if n < MIN_PACKET {
                "truncated"
            } else {
                "bad_mac"
            };
            assert_eq!(e.reason(), want, "len {n}");
        }
    }

    #[test]
    fn trailing_bytes() {
        let mut pkt = encode(&sample(), KEY).expect("encode");
        pkt.push(0);
        assert_eq!(decode(&pkt, KEY, "prod"), Err(DecodeError::BadMac));
        // Even if the sender signs the trailing bytes, the body parser refuses.
        let mut hb = sample();
        hb.advert.mirrors = vec![MirrorRegister {
            name: "m".into(),
            ..MirrorRegister::default()
        }];
        let mut body = body_of(&encode(&hb, KEY).expect("encode"));
        body.push(0);
        assert_eq!(
            decode(&resign(&body), KEY, "prod"),
            Err(DecodeError::Malformed("trailing bytes after body"))
        );
        // A lone byte after the standby register is a bad mirror count.
        let mut body = body_of(&encode(&sample(), KEY).expect("encode"));
        body.push(0);
        assert_eq!(
            decode(&resign(&body), KEY, "prod"),
            Err(DecodeError::Malformed("bad mirror count"))
        );
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
    fn framing_errors() {
        assert_eq!(
            decode(&[0u8; MAX_PACKET + 1], KEY, "prod").map_err(|e| e.reason()),
            Err("too_large")
        );
        assert_eq!(
            decode(b"GET / HTTP/1.1", KEY, "prod"),
            Err(DecodeError::BadMagic)
        );
        assert_eq!(
            decode(b"TDH", KEY, "prod").map_err(|e| e.reason()),
            Err("truncated")
        );
        let mut pkt = encode(&sample(), KEY).expect("encode");
        pkt[4] = MAX_VERSION + 1;
        assert_eq!(
            decode(&pkt, KEY, "prod"),
            Err(DecodeError::BadVersion(MAX_VERSION + 1))
        );
        pkt[4] = 0;
        assert_eq!(decode(&pkt, KEY, "prod"), Err(DecodeError::BadVersion(0)));
    }

    /// Offset of the group count byte in `sample()`'s body.
    const GROUP_COUNT_AT: usize = 4 + 1 + 1 + 5 + 2 + 8 * 3 + 1 + 8 + 12 + 4;
    /// Offset of the standby setting count byte in `sample()`'s body (after
    /// the one group: "db", state, gflags, owner "a", epoch).
    const SETTING_COUNT_AT: usize = GROUP_COUNT_AT + 1 + 3 + 1 + 1 + 2 + 8;

    #[test]
    fn oversize_and_inconsistent_counts() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        assert_eq!(body[GROUP_COUNT_AT], 1);
        let mut b = body.clone();
        b[GROUP_COUNT_AT] = (MAX_GROUPS + 1) as u8;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("too many groups"))
        );
        let mut b = body.clone();
        b[GROUP_COUNT_AT] = 2; // claims a second group that is not there
        b.truncate(SETTING_COUNT_AT);
        assert_eq!(decode(&resign(&b), KEY, "prod"), Err(OVERRUN));
        // String length pointing past the end of the body.
        let mut b = body.clone();
        b[GROUP_COUNT_AT + 1] = 60;
        assert_eq!(decode(&resign(&b), KEY, "prod"), Err(OVERRUN));
        // Zero-length name.
        let mut b = body;
        b[6] = 0;
        assert_eq!(
            decode(&resign(&b), KEY, "prod").map_err(|e| e.reason()),
            Err("malformed")
        );
    }

    #[test]
    fn invalid_enums_and_flags() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        let state_at = GROUP_COUNT_AT + 1 + 3;
        assert_eq!(body[state_at], 2);
        let mut b = body.clone();
        b[state_at] = 5;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("unknown group state"))
        );
        let mut b = body.clone();
        b[state_at + 1] |= 0x80;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("unknown group flags"))
        );
        let mut b = body;
        b[5] |= 0x10;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("unknown header flags"))
        );
    }

    #[test]
    fn invalid_utf8() {
        let mut b = body_of(&encode(&sample(), KEY).expect("encode"));
        b[12] = 0xff; // node name "a" -> 0xff
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("name is not valid UTF-8"))
        );
    }

    #[test]
    fn duplicate_group_rejected_both_ways() {
        let mut hb = sample();
        hb.advert.groups.push(hb.advert.groups[0].clone());
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::DuplicateGroup("db".into()))
        );
        let mut b = body_of(&encode(&sample(), KEY).expect("encode"));
        let g = b[GROUP_COUNT_AT + 1..SETTING_COUNT_AT].to_vec();
        b[GROUP_COUNT_AT] = 2;
        b.splice(SETTING_COUNT_AT..SETTING_COUNT_AT, g);
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("duplicate group"))
        );
    }

    #[test]
    fn standby_register_bad_flags() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        let sflags_at = SETTING_COUNT_AT + 1 + 2;
        assert_eq!(body[sflags_at], 0x01);
        for bad in [0x02, 0x03, 0x80, 0xff] {
            let mut b = body.clone();
            b[sflags_at] = bad;
            assert_eq!(
                decode(&resign(&b), KEY, "prod"),
                Err(DecodeError::Malformed("unknown standby setting flags")),
                "sflags {bad:#04x}"
            );
        }
        let mut b = body;
        b[sflags_at] = 0;
        let mut want = sample();
        want.advert.standby_register[0].standby = false;
        assert_eq!(decode(&resign(&b), KEY, "prod"), Ok(want));
    }

    #[test]
    fn duplicate_standby_setting_rejected_both_ways() {
        let mut hb = sample();
        let mut dup = hb.advert.standby_register[0].clone();
        dup.standby = false;
        dup.epoch += 1;
        hb.advert.standby_register.push(dup);
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::DuplicateStandbySetting("b".into()))
        );
        let mut b = body_of(&encode(&sample(), KEY).expect("encode"));
        let s = b[SETTING_COUNT_AT + 1..].to_vec();
        b[SETTING_COUNT_AT] = 2;
        b.extend_from_slice(&s);
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("duplicate standby setting"))
        );
    }

    #[test]
    fn standby_setting_count_over_max() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        assert_eq!(body[SETTING_COUNT_AT], 1);
        let mut b = body.clone();
        b[SETTING_COUNT_AT] = (MAX_NODES + 1) as u8;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("too many standby settings"))
        );
        let mut b = body;
        b[SETTING_COUNT_AT] = 0xff;
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("too many standby settings"))
        );

        let setting = |i: usize| StandbySetting {
            node: format!("n{i}"),
            standby: i < MAX_NODES / 2,
            epoch: i as u64,
        };
        let mut hb = sample();
        hb.advert.standby_register = (0..MAX_NODES + 1).map(setting).collect();
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::TooManyStandbySettings {
                count: MAX_NODES + 1
            })
        );
        hb.advert.standby_register.truncate(MAX_NODES);
        let pkt = encode(&hb, KEY).expect("MAX_NODES short settings fit");
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb));
    }

    #[test]
    fn truncation_inside_standby_register() {
        let body = body_of(&encode(&sample(), KEY).expect("encode"));
        // Cut anywhere from just before the count byte to just before the end.
        for len in SETTING_COUNT_AT..body.len() {
            assert_eq!(
                decode(&resign(&body[..len]), KEY, "prod"),
                Err(OVERRUN),
                "body cut to {len}"
            );
        }
        // The count claims a second setting that is not there.
        let mut b = body;
        b[SETTING_COUNT_AT] = 2;
        assert_eq!(decode(&resign(&b), KEY, "prod"), Err(OVERRUN));
    }

    #[test]
    fn standby_setting_node_name_rules() {
        let mut hb = sample();
        hb.advert.standby_register[0].node = String::new();
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::BadName {
                field: "standby setting node",
                len: 0
            })
        );
        hb.advert.standby_register[0].node = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::BadName {
                field: "standby setting node",
                ..
            })
        ));
        let mut b = body_of(&encode(&sample(), KEY).expect("encode"));
        b[SETTING_COUNT_AT + 1] = 0; // zero-length node name
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed(
                "bad standby setting node name length"
            ))
        );
        let mut b = body_of(&encode(&sample(), KEY).expect("encode"));
        b[SETTING_COUNT_AT + 2] = 0xff; // node "b" -> 0xff
        assert_eq!(
            decode(&resign(&b), KEY, "prod"),
            Err(DecodeError::Malformed("name is not valid UTF-8"))
        );
    }

    #[test]
    fn encode_limits() {
        let mut hb = sample();
        hb.node = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::BadName { field: "node", .. })
        ));
        hb.node = "n".repeat(MAX_NAME_LEN);
        let pkt = encode(&hb, KEY).expect("max-length name fits");
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb.clone()));
        hb.cluster = String::new();
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::BadName {
                field: "cluster",
                ..
            })
        ));

        let group = |i: usize| GroupAdvert {
            name: format!("{i:0>64}"),
            local: LocalGroupState::Stopped,
            blocked: false,
            maintenance: false,
            assignment: Some(Assignment {
                owner: "o".repeat(MAX_NAME_LEN),
                epoch: 1,
            }),
        };
        let mut hb = sample();
        hb.advert.groups = (0..MAX_GROUPS + 1).map(group).collect();
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::TooManyGroups {
                count: MAX_GROUPS + 1
            })
        );
        hb.advert.groups.truncate(MAX_GROUPS);
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::TooLarge { len }) if len > MAX_PACKET
        ));
        // Eight maximal groups still fit in one datagram.
        hb.advert.groups.truncate(8);
        let pkt = encode(&hb, KEY).expect("fits");
        assert!(pkt.len() <= MAX_PACKET);
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb));
    }

    fn v2() -> Heartbeat {
        Heartbeat {
            version: 2,
            max_version: 2,
            config_digest: "0123456789abcdef".into(),
            ..sample()
        }
    }

    #[test]
    fn version_2_carries_max_version_and_config_digest() {
        let pkt = encode(&v2(), KEY).expect("encode");
        let v1 = encode(&sample(), KEY).expect("encode");
        // Version 2 is version 1 with its version byte and, after sent_ms (before the
        // echo), the protocol section: max 2 and the 16-byte digest.
        let mut want = hex(&body_of(&v1));
        let at = want.find("0000000000001324").expect("echo");
        want.insert_str(at, &format!("0210{}", hex(b"0123456789abcdef")));
        want.replace_range(8..10, "02");
        assert_eq!(hex(&body_of(&pkt)), want);
        assert_eq!(decode(&pkt, KEY, "prod"), Ok(v2()));
        // Version 1 (an older build) decodes as max 1 and no digest.
        let old = decode(&v1, KEY, "prod").expect("v1");
        assert_eq!((old.version, old.max_version), (1, 1));
        assert!(old.config_digest.is_empty());
    }

    #[test]
    fn versions_outside_the_range_are_refused_both_ways() {
        let mut hb = v2();
        hb.max_version = 1;
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::BadVersion { version: 2, max: 1 })
        );
        hb.version = MAX_VERSION + 1;
        hb.max_version = MAX_VERSION + 1;
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::BadVersion { .. })
        ));
        hb.version = 0;
        assert!(matches!(
            encode(&hb, KEY),
            Err(EncodeError::BadVersion { .. })
        ));
        hb = v2();
        hb.config_digest = "d".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            encode(&hb, KEY),
            Err(EncodeError::BadDigest(MAX_NAME_LEN + 1))
        );
        // A newer build's datagram (version above ours) is bad_version before the MAC.
        let mut body = body_of(&encode(&v2(), KEY).expect("encode"));
        body[MAGIC.len()] = MAX_VERSION + 1;
        let e = decode(&resign(&body), KEY, "prod").unwrap_err();
        assert_eq!(e, DecodeError::BadVersion(MAX_VERSION + 1));
        // An authenticated max_version below the version is malformed.
        let mut body = body_of(&encode(&v2(), KEY).expect("encode"));
        let at = PREAMBLE_LEN + 1 + 5 + 2 + 8 * 3 + 1 + 8;
        body[at] = 1;
        assert!(matches!(
            decode(&resign(&body), KEY, "prod"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn the_send_version_is_the_lower_maximum_once_heard() {
        assert_eq!(version_for(MAX_VERSION, None), MAX_VERSION);
        assert_eq!(version_for(2, Some(1)), 1);
        assert_eq!(version_for(2, Some(3)), 2);
        assert_eq!(version_for(3, Some(3)), 3);
    }

    #[test]
    fn rewriting_the_version_byte_fails_the_mac() {
        let mut pkt = encode(&v2(), KEY).expect("encode");
        pkt[MAGIC.len()] = 1;
        assert_eq!(decode(&pkt, KEY, "prod"), Err(DecodeError::BadMac));
    }

    fn name() -> impl Strategy<Value = String> {
        // Includes multi-byte UTF-8 while staying within MAX_NAME_LEN bytes.
        "[a-zA-Z0-9\\-_é]{1,20}"
    }

    fn heartbeat() -> impl Strategy<Value = Heartbeat> {
        let state = prop_oneof![
            Just(LocalGroupState::Stopped),
            Just(LocalGroupState::Starting),
            Just(LocalGroupState::Running),
            Just(LocalGroupState::Stopping),
            Just(LocalGroupState::Failed),
        ];
        let group = (
            name(),
            state,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of((name(), any::<u64>())),
        )
            .prop_map(|(name, local, blocked, maintenance, a)| GroupAdvert {
                name,
                local,
                blocked,
                maintenance,
                assignment: a.map(|(owner, epoch)| Assignment { owner, epoch }),
            });
        let groups = proptest::collection::btree_map(name(), group, 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(n, mut g)| {
                    g.name = n;
                    g
                })
                .collect::<Vec<_>>()
        });
        // Unique node names, but in random (not necessarily sorted) order.
        let register = proptest::collection::btree_map(name(), (any::<bool>(), any::<u64>()), 0..6)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(node, (standby, epoch))| StandbySetting {
                        node,
                        standby,
                        epoch,
                    })
                    .collect::<Vec<_>>()
            })
            .prop_shuffle();
        (
            (name(), any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u8>(), any::<u64>()),
            proptest::option::of((any::<u64>(), any::<u32>())),
            (any::<u32>(), any::<bool>(), groups, register),
            (MIN_VERSION..=MAX_VERSION, 0..=MAX_VERSION, "[0-9a-f]{0,16}"),
        )
            .prop_map(
                |(
                    (node, boot_id, boot_time_ms, seq),
                    (path, sent_ms),
                    echo,
                    (p, s, groups, standby_register),
                    (version, extra, digest),
                )| {
                    let v1 = version == 1;
                    Heartbeat {
                        version,
                        max_version: if v1 { 1 } else { version.saturating_add(extra) },
                        config_digest: if v1 { String::new() } else { digest },
                        cluster: "prod".into(),
                        node,
                        boot_id,
                        boot_time_ms,
                        seq,
                        path,
                        sent_ms,
                        echo: echo.map(|(peer_sent_ms, held_ms)| Echo {
                            peer_sent_ms,
                            held_ms,
                        }),
                        advert: NodeAdvert {
                            priority: p,
                            standby: s,
                            groups,
                            standby_register,
                            mirrors: Vec::new(),
                            lags: Vec::new(),
                        },
                    }
                },
            )
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip { at: usize, mask: u8 },
        Truncate { len: usize },
        Append(Vec<u8>),
        Splice { at: usize, bytes: Vec<u8> },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
            any::<usize>().prop_map(|len| Mutation::Truncate { len }),
            proptest::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
            (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        ]
    }

    fn apply(pkt: &[u8], m: &Mutation) -> Vec<u8> {
        let mut out = pkt.to_vec();
        match m {
            Mutation::Flip { at, mask } => out[at % pkt.len()] ^= mask,
            Mutation::Truncate { len } => out.truncate(len % pkt.len()),
            Mutation::Append(b) => out.extend_from_slice(b),
            Mutation::Splice { at, bytes } => {
                let at = at % pkt.len();
                out.splice(at..at, bytes.iter().copied());
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            prop_assert!(decode(&bytes, KEY, "prod").is_err());
            // Same with a valid preamble so the MAC check is reached.
            let mut b = b"TDHB\x01".to_vec();
            b.extend_from_slice(&bytes);
            prop_assert!(decode(&b, KEY, "prod").is_err());
        }

        #[test]
        fn round_trip(hb in heartbeat()) {
            let pkt = encode(&hb, KEY).expect("small heartbeats always encode");
            prop_assert!(pkt.len() <= MAX_PACKET);
            prop_assert_eq!(decode(&pkt, KEY, "prod"), Ok(hb));
        }

        #[test]
        fn mutated_packets_rejected(hb in heartbeat(), muts in proptest::collection::vec(mutation(), 1..4)) {
            let pkt = encode(&hb, KEY).expect("encode");
            let mut m = pkt.clone();
            for mu in &muts {
                m = apply(&m, mu);
                if m.is_empty() {
                    break;
                }
            }
            prop_assume!(m != pkt);
            prop_assert!(decode(&m, KEY, "prod").is_err(), "mutation {:?} accepted", muts);
        }
    }
}
