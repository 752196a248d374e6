//! `[[mirror]]`: replicated volumes. Each mirror names its backing store (the same path
//! on every node), the replication address of every node that holds a copy, and one
//! `[[mirror.link]]` per pair of nodes that replicate to each other (mode, rate cap,
//! queue, lag budget, encryption, compression). The same file works on every node.
//!
//! Cross-field rules live in [`MirrorConfig::validate`]; each error names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{invalid, ConfigError};
use crate::mirror::generation::SplitBrainPolicy;

/// A byte count written as an integer or as a string with a unit: `"64MiB"`, `"1 GiB"`,
/// `"500k"`. Units are binary (k = KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"`, `"1 GiB"`, `"4096"`, `"500k"`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as \"64MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// How a write reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// A write completes once the peer has it (DRBD protocol C); FUA and FLUSH complete
    /// once it is durable on the peer.
    #[default]
    Sync,
    /// A write completes once it is local; a bounded queue feeds the peer.
    Async,
}

impl ReplicationMode {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

/// Where a mirror keeps its metadata (generations, disk state, activity log, one dirty
/// bitmap per peer). A mirror's own `metadata` wins; without one, `[cluster]`
/// `mirror_metadata` decides (external unless set; the appliance's config sets
/// internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MetadataKind {
    /// Files in `<state_dir>/mirror/<name>`; the whole backing is data.
    #[default]
    External,
    /// A reserved area at the end of the backing (superblock, two state slots, one
    /// bitmap per other copy); the mirror exposes only the data before it. A new file
    /// is created `size` + the area long.
    Internal,
}

/// What a primary does with its writes when its node loses the group's lease (the
/// fast stop of a node without a quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnNoQuorum {
    /// Step down at once: in-flight and new writes fail with EIO.
    #[default]
    IoError,
    /// Hold new writes (DRBD's suspend-io): they complete if the node gets its lease
    /// back at the same epoch, and fail with EIO once the group stops for good or a
    /// newer epoch is seen.
    Suspend,
}

/// `[[mirror]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Unique name; a `mirror` resource refers to it.
    pub name: String,
    /// The backing file or block device (the same path on every node).
    pub backing: PathBuf,
    /// Size of the volume. A missing backing file is created sparse with this size;
    /// an existing one must be at least this big. Required for files.
    #[serde(default)]
    pub size: Option<ByteSize>,
    /// Replication listen address of every node that holds a copy: `{ n1 = "10.0.1.1:7790" }`.
    pub addresses: BTreeMap<String, SocketAddr>,
    /// One per replicated pair of nodes.
    #[serde(rename = "link", default)]
    pub links: Vec<MirrorLinkConfig>,
    /// The NBD Unix socket the primary serves; default `<state_dir>/nbd-<name>.sock`.
    #[serde(default)]
    pub nbd_socket: Option<PathBuf>,
    /// Also serve NBD on this TCP address (loopback) while primary.
    #[serde(default)]
    pub nbd_tcp: Option<SocketAddr>,
    /// What to do when both copies changed apart.
    #[serde(default)]
    pub split_brain: SplitBrainPolicy,
    /// What the primary does with writes when its node loses the lease.
    #[serde(default)]
    pub on_no_quorum: OnNoQuorum,
    /// Where the metadata lives: `"external"` (the state directory) or `"internal"`
    /// (the end of the backing); without it, `[cluster] mirror_metadata` decides (see
    /// [`MirrorConfig::metadata_of`]). Change it on an existing mirror with `tandem
    /// mirror convert-metadata`: a mirror opened with the other kind is refused.
    #[serde(default)]
    pub metadata: Option<MetadataKind>,
}

impl MetadataKind {
    pub fn name(self) -> &'static str {
        match self {
            MetadataKind::External => "external",
            MetadataKind::Internal => "internal",
        }
    }
}

/// Where a mirror's metadata kind comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFrom {
    /// Its own `metadata` key.
    Mirror,
    /// `[cluster] mirror_metadata` (set or defaulted).
    Cluster,
}

impl std::fmt::Display for MetadataFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetadataFrom::Mirror => "set on the mirror",
            MetadataFrom::Cluster => "the `[cluster] mirror_metadata` default",
        })
    }
}

/// `[[mirror.link]]`: the replication between two nodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorLinkConfig {
    /// The two nodes, by name.
    pub between: [String; 2],
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Cap on resync traffic in bytes per second; none by default (fill the link).
    #[serde(default)]
    pub rate_limit: Option<ByteSize>,
    /// Async mode: bytes that may wait for the peer before writes go to the bitmap.
    #[serde(default = "default_queue")]
    pub queue: ByteSize,
    /// Async mode: the lag (seconds) that operators accept; exported for alerting.
    #[serde(with = "humantime_serde", default)]
    pub lag_budget: Option<Duration>,
    /// Encrypt this link (ChaCha20-Poly1305), for WAN links. Authentication is always on.
    #[serde(default)]
    pub encrypt: bool,
    /// Compress write and resync payloads on this link: `"zstd"` (each payload on its
    /// own, sent raw when that is not smaller) or `"none"` (the default). For WAN links
    /// with compressible data; costs CPU on both sides. The link is compressed when
    /// both nodes' builds support it and either side asks (a peer of an older build
    /// gets an uncompressed link).
    #[serde(default)]
    pub compress: crate::mirror::wire::compress::Compress,
    /// A link that carries nothing from the peer for this long is dropped (both sides
    /// ping at a quarter of it), so a silently dead link does not hold a sync
    /// primary's writes: the peer becomes out of date and is resynced later, as
    /// after any link loss. DRBD's `timeout` plays this part.
    #[serde(with = "humantime_serde", default = "default_link_timeout")]
    pub timeout: Duration,
    /// Daily windows (UTC, `"HH:MM-HH:MM"`) during which replication on this link is
    /// paused: changes are tracked in the bitmap and sent when the window ends.
    #[serde(default)]
    pub pause_during: Vec<crate::mirror::schedule::PauseWindow>,
}

fn default_link_timeout() -> Duration {
    Duration::from_secs(6)
}

fn default_queue() -> ByteSize {
    ByteSize(64 << 20)
}

impl MirrorConfig {
    /// The effective metadata kind: the mirror's own `metadata`, else `cluster_default`
    /// (`[cluster] mirror_metadata`), and which of the two decided.
    pub fn metadata_of(&self, cluster_default: MetadataKind) -> (MetadataKind, MetadataFrom) {
        match self.metadata {
            Some(kind) => (kind, MetadataFrom::Mirror),
            None => (cluster_default, MetadataFrom::Cluster),
        }
    }

    /// Checks names, addresses and links against the cluster's nodes; `metadata` is
    /// the effective kind ([`MirrorConfig::metadata_of`]).
    pub fn validate(
        &self,
        key: &str,
        nodes: &[String],
        metadata: MetadataKind,
    ) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                format!("{key}.name"),
                "use letters, digits, '-' and '_' only",
            ));
        }
        if let Some(size) = self.size {
            if size.0 == 0 || size.0 % 4096 != 0 {
                return Err(invalid(
                    format!("{key}.size"),
                    "must be a positive multiple of 4 KiB",
                ));
            }
        }
        if metadata == MetadataKind::Internal {
            self.check_internal(key)?;
        }
        if self.addresses.len() < 2 {
            return Err(invalid(
                format!("{key}.addresses"),
                "name at least two nodes that hold a copy",
            ));
        }
        for node in self.addresses.keys() {
            if !nodes.contains(node) {
                return Err(invalid(
                    format!("{key}.addresses.{node}"),
                    "no [[node]] has this name",
                ));
            }
        }
        if self.links.is_empty() {
            return Err(invalid(
                format!("{key}.link"),
                "add at least one [[mirror.link]] between two nodes",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, link) in self.links.iter().enumerate() {
            let lkey = format!("{key}.link[{i}]");
            let [a, b] = &link.between;
            if a == b {
                return Err(invalid(
                    format!("{lkey}.between"),
                    "a link joins two different nodes",
                ));
            }
            for n in [a, b] {
                if !self.addresses.contains_key(n) {
                    return Err(invalid(
                        format!("{lkey}.between"),
                        format!("{n:?} has no entry in {key}.addresses"),
                    ));
                }
            }
            let pair = if a < b { (a, b) } else { (b, a) };
            if !seen.insert(pair) {
                return Err(invalid(
                    format!("{lkey}.between"),
                    "this pair already has a link",
                ));
            }
            if link.timeout < Duration::from_millis(400) || link.timeout > Duration::from_secs(600)
            {
                return Err(invalid(format!("{lkey}.timeout"), "must be 400ms to 10min"));
            }
            if link.queue.0 < 1 << 20 {
                return Err(invalid(format!("{lkey}.queue"), "must be at least 1MiB"));
            }
            if matches!(link.rate_limit, Some(ByteSize(0))) {
                return Err(invalid(
                    format!("{lkey}.rate_limit"),
                    "must be positive (omit it for no cap)",
                ));
            }
        }
        Ok(())
    }

    /// What internal metadata's layout limits: the name's length and the peer slots.
    fn check_internal(&self, key: &str) -> Result<(), ConfigError> {
        use crate::mirror::replica::meta::layout::{MAX_NAME, MAX_PEER_SLOTS};
        if self.name.len() > MAX_NAME {
            return Err(invalid(
                format!("{key}.name"),
                format!("at most {MAX_NAME} characters with metadata = \"internal\""),
            ));
        }
        if self.addresses.len() > MAX_PEER_SLOTS as usize + 1 {
            return Err(invalid(
                format!("{key}.metadata"),
                format!("internal metadata holds at most {MAX_PEER_SLOTS} peers"),
            ));
        }
        Ok(())
    }

    /// The links this node takes part in: (peer, link).
    pub fn links_of<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a MirrorLinkConfig)> {
        self.links.iter().filter_map(move |l| {
            let [a, b] = &l.between;
            if a == node {
                Some((b.as_str(), l))
            } else if b == node {
                Some((a.as_str(), l))
            } else {
                None
            }
        })
    }
}
