//! Configuration: one TOML file describes the cluster, its nodes and heartbeat paths,
//! the control API and the protected groups of resources.
//!
//! Every struct rejects unknown keys (`deny_unknown_fields`), so a typo is an error, not
//! a silently ignored setting. Rules that span several fields live in
//! [`Config::validate`]; each error names the offending key and says why.
//! The fully commented example is `examples/tandem.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod fence;
mod image;
pub mod init;
mod mirror;
mod quorum;
pub mod reload;
pub mod secret;
mod snmp;
pub use fence::*;
pub use image::*;
pub use mirror::*;
pub use quorum::*;
pub use snmp::*;

/// A configuration problem: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// `[metrics]`: the Prometheus endpoint; absent means no endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// `[snmp]`: the SNMP agent and notification receivers; absent means no agent.
    #[serde(default)]
    pub snmp: Option<SnmpConfig>,
    /// `[console]`: the web console (HTTPS); absent means no console.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupConfig>,
    /// `[[mirror]]`: replicated volumes.
    #[serde(rename = "mirror", default)]
    pub mirrors: Vec<MirrorConfig>,
    /// `[quorum]`: ownership through a majority of the voters.
    #[serde(default)]
    pub quorum: QuorumSection,
    /// `[witness]`: an extra voter with no resources.
    #[serde(default)]
    pub witness: Option<WitnessRef>,
    /// `[image]`: this node's boot slots, for updates through the API.
    #[serde(default)]
    pub image: ImageConfig,
    /// The digest of what every node must agree on ([`cluster_digest`]); set by
    /// [`Config::parse`].
    #[serde(skip)]
    pub digest: String,
}

/// The sections that may differ between the nodes' files (where this node keeps its
/// state and sockets, its boot slots, its observers, its watchdog device, how its event loop is
/// scheduled) or that hold secrets (the key, the BMC credentials in each node's
/// `fence`), which a published digest must not cover. Each `[[mirror]]`'s `backing`
/// and `nbd_socket` are this machine's paths too. Everything else must be the same
/// everywhere.
const NODE_LOCAL: &[(&str, Option<&str>)] = &[
    ("api", None),
    ("image", None),
    ("image", None),
    ("metrics", None),
    ("snmp", None),
    ("console", None),
    ("cluster", Some("state_dir")),
    ("cluster", Some("events_max_bytes")),
    ("cluster", Some("events_keep")),
    ("cluster", Some("key_file")),
    ("cluster", Some("key")),
    ("quorum", Some("watchdog")),
    ("heartbeat", Some("realtime_priority")),
];

/// Keys of each entry of an array of tables that are this machine's own.
const NODE_LOCAL_IN_ARRAYS: &[(&str, &str)] = &[
    ("node", "fence"),
    ("mirror", "backing"),
    ("mirror", "nbd_socket"),
];

/// A digest of the cluster-wide part of a configuration file: its parsed TOML (so
/// comments, whitespace and the order of keys do not count) without the [`NODE_LOCAL`]
/// keys, as canonical JSON (sorted keys), SHA-256, the first 16 hex digits. Nodes
/// publish theirs through the quorum log, and a node whose file differs is reported.
pub fn cluster_digest(text: &str) -> Option<String> {
    use sha2::Digest as _;
    let mut v: toml::Table = toml::from_str(text).ok()?;
    for (table, key) in NODE_LOCAL {
        match key {
            None => {
                v.remove(*table);
            }
            Some(k) => {
                if let Some(toml::Value::Table(t)) = v.get_mut(*table) {
                    t.remove(*k);
                }
            }
        }
    }
    for (array, key) in NODE_LOCAL_IN_ARRAYS {
        if let Some(toml::Value::Array(items)) = v.get_mut(*array) {
            for item in items.iter_mut() {
                if let toml::Value::Table(t) = item {
                    t.remove(*key);
                }
            }
        }
    }
    let json = serde_json::to_vec(&v).ok()?;
    let hash = sha2::Sha256::digest(&json);
    Some(hash[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name; carried in every heartbeat, so two clusters on one LAN never mix.
    pub name: String,
    /// Shared secret for heartbeat HMACs (at least 16 characters). Either this or `key_file`.
    #[serde(default)]
    pub key: Option<String>,
    /// A file whose contents (trimmed) are the shared secret.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Where persistent state lives: the event sequence and the event log.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Two-node safety: probe a group's floating IP before taking it over.
    #[serde(default = "yes")]
    pub probe_vip_before_takeover: bool,
    /// How long the takeover probe listens for an answer. A LAN answers an ARP probe or
    /// neighbour solicitation in well under a millisecond (the kernel replies, not a
    /// process), so this mostly bounds the cost of the probe on the failover time.
    #[serde(with = "humantime_serde", default = "default_probe_timeout")]
    pub vip_probe_timeout: Duration,
    /// `events.jsonl` and `timelines.jsonl` rotate once a line would take them past
    /// this many bytes (`events.jsonl.1`, ...).
    #[serde(default = "default_events_max_bytes")]
    pub events_max_bytes: u64,
    /// Rotated event files kept.
    #[serde(default = "default_events_keep")]
    pub events_keep: usize,
    /// Where a `[[mirror]]` without its own `metadata` keeps its metadata:
    /// `"external"` (the state directory; the default) or `"internal"` (the end of the
    /// backing; the appliance's config sets this).
    #[serde(default)]
    pub mirror_metadata: MetadataKind,
}

impl ClusterConfig {
    /// How the event log's files rotate.
    pub fn event_rotation(&self) -> crate::rotate::Policy {
        crate::rotate::Policy {
            max_bytes: self.events_max_bytes,
            keep: self.events_keep,
        }
    }
}

/// The smallest rotation size: a file must hold a good many events.
const MIN_EVENTS_BYTES: u64 = 64 * 1024;

fn default_events_max_bytes() -> u64 {
    crate::rotate::Policy::DEFAULT.max_bytes
}

fn default_events_keep() -> usize {
    crate::rotate::Policy::DEFAULT.keep
}

fn default_probe_timeout() -> Duration {
    Duration::from_millis(150)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tandem")
}
fn yes() -> bool {
    true
}

/// `[heartbeat]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// A node is dead after this much silence on ALL paths.
    #[serde(with = "humantime_serde", default = "default_dead_time")]
    pub dead_time: Duration,
    /// UDP port heartbeats are sent to and received on, on every path.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Names of the heartbeat paths; every node gives an address on each.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The SCHED_FIFO priority (1 to 99) of the thread that sends heartbeats, renews
    /// leases and pets the watchdog; the daemon's memory is locked (`mlockall`) too.
    /// 0 runs that thread under the normal scheduler and locks nothing.
    #[serde(default = "default_realtime_priority")]
    pub realtime_priority: u8,
}

pub(crate) fn default_interval() -> Duration {
    Duration::from_millis(200)
}
pub(crate) fn default_dead_time() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_port() -> u16 {
    5405
}
pub(crate) fn default_realtime_priority() -> u8 {
    10
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: default_interval(),
            dead_time: default_dead_time(),
            port: default_port(),
            paths: Vec::new(),
            realtime_priority: default_realtime_priority(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket the CLI talks to.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Optional TCP listener; requires `token`.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// Bearer token required on the TCP listener.
    #[serde(default)]
    pub token: Option<String>,
}

/// `[console]`: the web console on this node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens (HTTPS; plain HTTP there is redirected).
    pub listen: SocketAddr,
    /// The certificate chain (PEM); without it (and `key`), a self-signed one is made
    /// at the first start in the state directory and kept.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (plain HTTP, no authentication).
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9776))
}

/// The default control socket.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/tandem/tandem.sock")
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: default_socket(),
            tcp: None,
            token: None,
        }
    }
}

/// `[[node]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// 1 is the most preferred node. Unique per cluster.
    pub priority: u32,
    /// The node's address on each heartbeat path, by path name.
    #[serde(default)]
    pub addresses: BTreeMap<String, IpAddr>,
    /// `[node.fence]`: how to power this node off through its BMC; absent: no
    /// power fencing for this node.
    #[serde(default)]
    pub fence: Option<FenceConfig>,
}

/// Whether a repaired, more preferred node takes its group back by itself.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switchback {
    #[default]
    Manual,
    Automatic,
}

/// `[[group]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Nodes allowed to run the group, most preferred first (N+1: `["n2", "n5"]` is
    /// "n2, else the standby n5"); empty means all, in node priority order.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Never share a node with another exclusive group: when two servers fail, one
    /// standby takes one of their groups, and the other is reported as unable to run.
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub switchback: Switchback,
    /// Local restarts allowed within `restart_window` before failing over.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(with = "humantime_serde", default = "default_restart_window")]
    pub restart_window: Duration,
    #[serde(rename = "resource", default)]
    pub resources: Vec<ResourceConfig>,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_restart_window() -> Duration {
    Duration::from_secs(600)
}

/// `[[group.resource]]`
///
/// (serde cannot combine `deny_unknown_fields` with `flatten`; the flattened
/// [`ResourceKind`] denies unknown keys instead, and a test pins that.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResourceConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: ResourceKind,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub quickcheck: Option<CheckConfig>,
    #[serde(default)]
    pub deepcheck: Option<CheckConfig>,
}

/// The kind of a resource and its kind-specific settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResourceKind {
    /// A floating IPv4/IPv6 address, `address = "10.0.0.10/24"`.
    Ip {
        address: String,
        interface: String,
        #[serde(default)]
        backup_interfaces: Vec<String>,
        /// Gratuitous ARP / unsolicited NA burst size on takeover.
        #[serde(default = "default_announce_count")]
        announce_count: u32,
        /// Periodic re-announcement while running; 0s disables.
        #[serde(with = "humantime_serde", default = "default_reannounce")]
        reannounce_every: Duration,
    },
    /// User scripts: start, stop, and optionally quickcheck and deepcheck.
    Exec {
        start: Vec<String>,
        stop: Vec<String>,
        #[serde(with = "humantime_serde", default = "default_script_timeout")]
        timeout: Duration,
    },
    /// A long-running command that Tandem supervises.
    Process {
        command: Vec<String>,
        #[serde(with = "humantime_serde", default = "default_stop_timeout")]
        stop_timeout: Duration,
    },
    /// A replicated volume (`[[mirror]]` by name): starting promotes this node's copy
    /// to primary and serves it over NBD; stopping flushes and demotes.
    Mirror { mirror: String },
    /// A filesystem on a mirror's volume, reached through the kernel's NBD client
    /// (`/dev/nbdN`): starting attaches the device, checks the filesystem and mounts
    /// it; stopping unmounts (ending the processes still using it) and detaches. The
    /// resource must depend on the group's `mirror` resource for that volume.
    Filesystem {
        mirror: String,
        /// An absolute path; created if missing.
        mountpoint: PathBuf,
        #[serde(default = "default_fstype")]
        fstype: String,
        /// Mount options, comma-separated (`noatime,nodev,...`); the generic ones are
        /// flags, the rest go to the filesystem.
        #[serde(default)]
        options: String,
        /// Create the filesystem when the volume is blank (its first 128 KiB all
        /// zeros). A volume with anything on it is never formatted.
        #[serde(default)]
        mkfs: bool,
        /// Check the filesystem before mounting (`e2fsck -p` for ext2/3/4).
        #[serde(default = "default_fsck")]
        fsck: bool,
    },
    /// A disk every node of the group sees (a block device or a file), used by one
    /// node at a time under a disk lease (`lease::core`): starting takes the lease
    /// (waiting out a previous holder's lease timeout), stopping releases it. The
    /// group's commands get `TANDEM_SHARED_DISK` and `TANDEM_SHARED_DISK_OFFSET`.
    SharedDisk {
        /// An absolute path: the same disk on every node.
        path: PathBuf,
        /// Where the 4 KiB lease sector is (a multiple of 4096).
        #[serde(default)]
        lease_offset: u64,
        /// Where the data begins (past the lease sector).
        #[serde(default = "default_data_offset")]
        data_offset: u64,
        #[serde(with = "humantime_serde", default = "default_lease_io_timeout")]
        io_timeout: Duration,
        #[serde(with = "humantime_serde", default = "default_lease_renew")]
        renew_interval: Duration,
        #[serde(with = "humantime_serde", default = "default_lease_timeout")]
        lease_timeout: Duration,
        #[serde(with = "humantime_serde", default = "default_lease_stop_after")]
        stop_after: Duration,
    },
}

impl ResourceKind {
    /// Every kind's name, as in `kind = "..."`.
    pub const NAMES: [&'static str; 6] = [
        "ip",
        "exec",
        "process",
        "mirror",
        "filesystem",
        "shared_disk",
    ];

    /// This kind's name, as in `kind = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            ResourceKind::Ip { .. } => "ip",
            ResourceKind::Exec { .. } => "exec",
            ResourceKind::Process { .. } => "process",
            ResourceKind::Mirror { .. } => "mirror",
            ResourceKind::Filesystem { .. } => "filesystem",
            ResourceKind::SharedDisk { .. } => "shared_disk",
        }
    }

    /// A `shared_disk`'s lease timing (None for other kinds).
    pub fn lease_timing(&self) -> Option<crate::lease::core::Timing> {
        match self {
            ResourceKind::SharedDisk {
                io_timeout,
                renew_interval,
                lease_timeout,
                stop_after,
                ..
            } => Some(crate::lease::core::Timing {
                io_timeout: *io_timeout,
                renew_interval: *renew_interval,
                lease_timeout: *lease_timeout,
                stop_after: *stop_after,
            }),
            _ => None,
        }
    }
}

fn default_data_offset() -> u64 {
    1 << 20
}
fn default_lease_io_timeout() -> Duration {
    crate::lease::core::Timing::default().io_timeout
}
fn default_lease_renew() -> Duration {
    crate::lease::core::Timing::default().renew_interval
}
fn default_lease_timeout() -> Duration {
    crate::lease::core::Timing::default().lease_timeout
}
fn default_lease_stop_after() -> Duration {
    crate::lease::core::Timing::default().stop_after
}

fn default_fstype() -> String {
    "ext4".into()
}
fn default_fsck() -> bool {
    true
}

fn default_announce_count() -> u32 {
    3
}
fn default_reannounce() -> Duration {
    Duration::from_secs(10)
}
fn default_script_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A health check: what to probe, how often, how long to wait. Unknown keys are
/// rejected by the flattened [`ProbeConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CheckConfig {
    #[serde(flatten)]
    pub probe: ProbeConfig,
    /// Defaults: 2 s for quickcheck, 30 s for deepcheck.
    #[serde(with = "humantime_serde", default)]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde", default = "default_check_timeout")]
    pub timeout: Duration,
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeConfig {
    /// The TCP connect succeeds.
    Tcp { address: SocketAddr },
    /// HTTP GET answers with `expect_status`; `https://` URLs go over TLS, trusting
    /// the Mozilla roots, or the CA certificates (PEM) in `ca_file`, or with
    /// `insecure = true` any certificate (a service's self-signed one).
    Http {
        url: String,
        #[serde(default = "default_status")]
        expect_status: u16,
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        insecure: bool,
    },
    /// An SMTP server sends a 220 banner and accepts EHLO with 250.
    Smtp {
        address: SocketAddr,
        #[serde(default = "default_helo")]
        helo: String,
    },
    /// A command exits 0.
    Exec { command: Vec<String> },
}

fn default_status() -> u16 {
    200
}
fn default_helo() -> String {
    "tandem.invalid".into()
}

/// Default quickCheck period.
pub const DEFAULT_QUICKCHECK: Duration = Duration::from_secs(2);
/// Default deepCheck period.
pub const DEFAULT_DEEPCHECK: Duration = Duration::from_secs(30);
/// The shortest heartbeat interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate()?;
        cfg.digest = cluster_digest(text).unwrap_or_default();
        Ok(cfg)
    }

    /// The cluster key bytes (from `key` or `key_file`).
    pub fn key_bytes(&self) -> Result<Vec<u8>, ConfigError> {
        key_bytes(
            self.cluster.key.as_deref(),
            self.cluster.key_file.as_deref(),
            "cluster",
        )
    }

    /// The node entry called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Where mirror `m` keeps its metadata, and which key decided.
    pub fn mirror_metadata(&self, m: &MirrorConfig) -> (MetadataKind, MetadataFrom) {
        m.metadata_of(self.cluster.mirror_metadata)
    }

    /// Checks every rule that spans fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_cluster()?;
        self.check_heartbeat()?;
        if let Some(snmp) = &self.snmp {
            snmp.validate()?;
        }
        if self.api.tcp.is_some() && self.api.token.as_deref().unwrap_or("").len() < 16 {
            return Err(invalid(
                "api.token",
                "a TCP API listener needs a token of at least 16 characters",
            ));
        }
        if let Some(c) = &self.console {
            if c.cert.is_some() != c.key.is_some() {
                return Err(invalid("console.cert", "`cert` and `key` go together"));
            }
        }
        self.check_nodes()?;
        unique(self.mirrors.iter().map(|m| &m.name), "mirror.name")?;
        let node_names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for (i, m) in self.mirrors.iter().enumerate() {
            let (kind, _) = m.metadata_of(self.cluster.mirror_metadata);
            m.validate(&format!("mirror[{i}]"), &node_names, kind)?;
        }
        unique(self.groups.iter().map(|g| &g.name), "group.name")?;
        for (gi, g) in self.groups.iter().enumerate() {
            self.check_group(&format!("group[{gi}]"), g)?;
        }
        self.check_heartbeat_fits()?;
        self.check_quorum()?;
        Ok(())
    }

    /// `[cluster]`: the name, the key, the VIP probe timeout.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        if self.cluster.name.is_empty() || self.cluster.name.len() > 64 {
            return Err(invalid("cluster.name", "must be 1 to 64 characters"));
        }
        check_key(
            self.cluster.key.as_deref(),
            self.cluster.key_file.as_deref(),
            "cluster",
        )?;
        let pt = self.cluster.vip_probe_timeout;
        if pt < Duration::from_millis(20) || pt > Duration::from_secs(5) {
            return Err(invalid("cluster.vip_probe_timeout", "must be 20ms to 5s"));
        }
        if self.cluster.events_max_bytes < MIN_EVENTS_BYTES {
            return Err(invalid(
                "cluster.events_max_bytes",
                format!("must be at least {MIN_EVENTS_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// `[heartbeat]`: interval against dead time, the port, the paths.
    fn check_heartbeat(&self) -> Result<(), ConfigError> {
        let hb = &self.heartbeat;
        if hb.interval < MIN_INTERVAL {
            return Err(invalid("heartbeat.interval", "must be at least 50ms"));
        }
        if hb.dead_time < hb.interval * 3 {
            return Err(invalid(
                "heartbeat.dead_time",
                format!(
                    "must be at least 3 x heartbeat.interval ({:?}), is {:?}",
                    hb.interval * 3,
                    hb.dead_time
                ),
            ));
        }
        if hb.port == 0 {
            return Err(invalid("heartbeat.port", "must not be 0"));
        }
        if hb.paths.is_empty() {
            return Err(invalid(
                "heartbeat.paths",
                "name at least one heartbeat path",
            ));
        }
        if hb.paths.len() > 8 {
            return Err(invalid("heartbeat.paths", "at most 8 paths"));
        }
        if hb.realtime_priority > 99 {
            return Err(invalid(
                "heartbeat.realtime_priority",
                "must be 0 (normal scheduling) or a SCHED_FIFO priority from 1 to 99",
            ));
        }
        unique(hb.paths.iter(), "heartbeat.paths")
    }

    /// `[[node]]`: unique names and priorities, an address on every heartbeat path
    /// and on no other.
    fn check_nodes(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid("node", "at least one [[node]] is required"));
        }
        unique(self.nodes.iter().map(|n| &n.name), "node.name")?;
        let paths = &self.heartbeat.paths;
        let mut prios = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = format!("node[{i}]");
            check_name(&n.name, &format!("{key}.name"))?;
            if !prios.insert(n.priority) {
                return Err(invalid(
                    format!("{key}.priority"),
                    format!("priority {} is used by another node", n.priority),
                ));
            }
            if let Some(p) = paths.iter().find(|p| !n.addresses.contains_key(*p)) {
                return Err(invalid(
                    format!("{key}.addresses"),
                    format!("no address for heartbeat path `{p}`"),
                ));
            }
            if let Some(p) = n.addresses.keys().find(|p| !paths.contains(p)) {
                return Err(invalid(
                    format!("{key}.addresses.{p}"),
                    "not a path named in heartbeat.paths",
                ));
            }
            if let Some(f) = &n.fence {
                f.validate(&format!("{key}.fence"))?;
            }
        }
        Ok(())
    }

    /// One `[[group]]` (`gk` is its key, `group[i]`): its nodes, restart limits and
    /// resources, and a hierarchy without cycles.
    fn check_group(&self, gk: &str, g: &GroupConfig) -> Result<(), ConfigError> {
        check_name(&g.name, &format!("{gk}.name"))?;
        if let Some(n) = g.nodes.iter().find(|n| self.node(n).is_none()) {
            return Err(invalid(
                format!("{gk}.nodes"),
                format!("unknown node `{n}`"),
            ));
        }
        if let Some((i, n)) = g
            .nodes
            .iter()
            .enumerate()
            .find(|(i, n)| g.nodes[..*i].contains(n))
        {
            return Err(invalid(
                format!("{gk}.nodes[{i}]"),
                format!("`{n}` is listed twice (the list is an order of preference)"),
            ));
        }
        if g.max_restarts > 100 {
            return Err(invalid(format!("{gk}.max_restarts"), "at most 100"));
        }
        if g.restart_window.is_zero() {
            return Err(invalid(format!("{gk}.restart_window"), "must be positive"));
        }
        unique(
            g.resources.iter().map(|r| &r.name),
            &format!("{gk}.resource.name"),
        )?;
        for (ri, r) in g.resources.iter().enumerate() {
            self.check_resource(&format!("{gk}.resource[{ri}]"), g, r)?;
        }
        if crate::placement::hierarchy::start_order(g).is_err() {
            return Err(invalid(
                format!("{gk}.resource"),
                "depends_on forms a cycle",
            ));
        }
        Ok(())
    }

    /// One resource `r` of group `g` (`rk` is its key): its dependencies, its kind, the
    /// mirror it uses or mounts, its checks.
    fn check_resource(
        &self,
        rk: &str,
        g: &GroupConfig,
        r: &ResourceConfig,
    ) -> Result<(), ConfigError> {
        check_name(&r.name, &format!("{rk}.name"))?;
        for d in &r.depends_on {
            if d == &r.name {
                return Err(invalid(format!("{rk}.depends_on"), "depends on itself"));
            }
            if !g.resources.iter().any(|o| &o.name == d) {
                return Err(invalid(
                    format!("{rk}.depends_on"),
                    format!("unknown resource `{d}` in group `{}`", g.name),
                ));
            }
        }
        r.kind.validate(rk)?;
        match &r.kind {
            ResourceKind::Mirror { mirror } => self.check_mirror_use(rk, g, mirror)?,
            ResourceKind::Filesystem { mirror, .. } => check_mount(rk, g, r, mirror)?,
            _ => {}
        }
        for (which, c) in [("quickcheck", &r.quickcheck), ("deepcheck", &r.deepcheck)] {
            if let Some(c) = c {
                c.validate(&format!("{rk}.{which}"))?;
            }
        }
        Ok(())
    }

    /// A `mirror` resource (`rk`) of group `g`: the `[[mirror]]` exists, has a copy on
    /// every node of the group, and no other resource uses it.
    fn check_mirror_use(&self, rk: &str, g: &GroupConfig, mirror: &str) -> Result<(), ConfigError> {
        let Some(m) = self.mirrors.iter().find(|m| m.name == mirror) else {
            return Err(invalid(
                format!("{rk}.mirror"),
                format!("no [[mirror]] is named `{mirror}`"),
            ));
        };
        if let Some(n) = g.nodes.iter().find(|n| !m.addresses.contains_key(*n)) {
            return Err(invalid(
                format!("{rk}.mirror"),
                format!(
                    "group node `{n}` holds no copy of mirror `{mirror}` (add it to its addresses)"
                ),
            ));
        }
        let users = self
            .groups
            .iter()
            .flat_map(|g| &g.resources)
            .filter(|r| matches!(&r.kind, ResourceKind::Mirror { mirror: x } if x == mirror))
            .count();
        if users > 1 {
            return Err(invalid(
                format!("{rk}.mirror"),
                format!("mirror `{mirror}` is used by {users} resources; one group owns a volume"),
            ));
        }
        Ok(())
    }

    /// The largest heartbeat this cluster can send (every group assigned to the
    /// longest node name, every node in the standby register) must fit in one
    /// datagram.
    fn check_heartbeat_fits(&self) -> Result<(), ConfigError> {
        use crate::cluster::packet as p;
        let longest = self
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .max_by_key(|n| n.len())
            .unwrap_or_default();
        let hb = p::Heartbeat {
            version: p::MAX_VERSION,
            max_version: p::MAX_VERSION,
            config_digest: "f".repeat(p::MAX_NAME_LEN),
            cluster: self.cluster.name.clone(),
            node: longest.clone(),
            boot_id: u64::MAX,
            boot_time_ms: u64::MAX,
            seq: u64::MAX,
            path: 0,
            sent_ms: u64::MAX,
            echo: Some(p::Echo {
                peer_sent_ms: u64::MAX,
                held_ms: u32::MAX,
            }),
            advert: p::NodeAdvert {
                priority: u32::MAX,
                standby: true,
                groups: self
                    .groups
                    .iter()
                    .map(|g| p::GroupAdvert {
                        name: g.name.clone(),
                        local: p::LocalGroupState::Running,
                        blocked: true,
                        maintenance: true,
                        assignment: Some(p::Assignment {
                            owner: longest.clone(),
                            epoch: u64::MAX,
                        }),
                    })
                    .collect(),
                standby_register: self
                    .nodes
                    .iter()
                    .map(|n| p::StandbySetting {
                        node: n.name.clone(),
                        standby: true,
                        epoch: u64::MAX,
                    })
                    .collect(),
                mirrors: self
                    .mirrors
                    .iter()
                    .map(|m| p::MirrorRegister {
                        name: m.name.clone(),
                        outdated: u64::MAX,
                        outdate_requests: m
                            .addresses
                            .keys()
                            .map(|n| (n.clone(), u64::MAX))
                            .collect(),
                    })
                    .collect(),
                // Lags are sent only as far as they fit.
                lags: Vec::new(),
            },
        };
        p::encode(&hb, b"size-check").map(|_| ()).map_err(|e| {
            invalid(
                "group",
                format!("the cluster's heartbeat would not fit in one datagram ({e}): use fewer or shorter group, mirror and node names"),
            )
        })
    }
}

impl ResourceKind {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        match self {
            ResourceKind::Ip {
                address,
                interface,
                backup_interfaces,
                announce_count,
                ..
            } => {
                parse_cidr(address).map_err(|r| invalid(format!("{key}.address"), r))?;
                check_ifname(interface, &format!("{key}.interface"))?;
                for b in backup_interfaces {
                    check_ifname(b, &format!("{key}.backup_interfaces"))?;
                    if b == interface {
                        return Err(invalid(
                            format!("{key}.backup_interfaces"),
                            "repeats the primary interface",
                        ));
                    }
                }
                if *announce_count == 0 || *announce_count > 50 {
                    return Err(invalid(format!("{key}.announce_count"), "must be 1 to 50"));
                }
            }
            ResourceKind::Exec { start, stop, .. } => {
                if start.is_empty() {
                    return Err(invalid(format!("{key}.start"), "empty command"));
                }
                if stop.is_empty() {
                    return Err(invalid(format!("{key}.stop"), "empty command"));
                }
            }
            ResourceKind::Process { command, .. } => {
                if command.is_empty() {
                    return Err(invalid(format!("{key}.command"), "empty command"));
                }
            }
            // Cross-checked against [[mirror]] in Config::validate.
            ResourceKind::Mirror { .. } => {}
            ResourceKind::Filesystem {
                mountpoint, fstype, ..
            } => {
                if !mountpoint.is_absolute() || mountpoint == Path::new("/") {
                    return Err(invalid(
                        format!("{key}.mountpoint"),
                        "must be an absolute path other than /",
                    ));
                }
                let ok = !fstype.is_empty()
                    && fstype
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.');
                if !ok {
                    return Err(invalid(format!("{key}.fstype"), "not a filesystem type"));
                }
            }
            ResourceKind::SharedDisk {
                path,
                lease_offset,
                data_offset,
                ..
            } => check_shared_disk(key, path, *lease_offset, *data_offset, self)?,
        }
        Ok(())
    }
}

impl CheckConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(i) = self.interval {
            if i < Duration::from_millis(100) {
                return Err(invalid(format!("{key}.interval"), "must be at least 100ms"));
            }
        }
        if self.timeout.is_zero() {
            return Err(invalid(format!("{key}.timeout"), "must be positive"));
        }
        match &self.probe {
            ProbeConfig::Http {
                url,
                ca_file,
                insecure,
                ..
            } => validate_http_probe(key, url, ca_file.as_deref(), *insecure)?,
            ProbeConfig::Exec { command } if command.is_empty() => {
                return Err(invalid(format!("{key}.command"), "empty command"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// An `http` probe's URL and its TLS trust: `ca_file` and `insecure` only for an
/// `https://` URL, and not both.
fn validate_http_probe(
    key: &str,
    url: &str,
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<(), ConfigError> {
    let tls = url.starts_with("https://");
    if !tls && !url.starts_with("http://") {
        return Err(invalid(
            format!("{key}.url"),
            "must start with http:// or https://",
        ));
    }
    if !tls && (ca_file.is_some() || insecure) {
        return Err(invalid(
            format!("{key}.url"),
            "ca_file and insecure need an https:// URL",
        ));
    }
    if ca_file.is_some() && insecure {
        return Err(invalid(
            format!("{key}.insecure"),
            "give either ca_file (verify against that CA) or insecure (accept any certificate), not both",
        ));
    }
    Ok(())
}

/// Parses `addr/prefix`, checking the prefix fits the family.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let prefix: u8 = p
        .parse()
        .map_err(|_| format!("`{p}` is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!("prefix /{prefix} is out of range 1..={max}"));
    }
    Ok((addr, prefix))
}

pub(crate) fn unique<'a>(
    names: impl Iterator<Item = &'a String>,
    key: &str,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(invalid(key, format!("`{n}` appears twice")));
        }
    }
    Ok(())
}

/// A `filesystem` resource `r` (`rk`) of group `g` mounting `mirror`: the group has a
/// `mirror` resource for it, and `r` depends on that resource.
fn check_mount(
    rk: &str,
    g: &GroupConfig,
    r: &ResourceConfig,
    mirror: &str,
) -> Result<(), ConfigError> {
    let carrier = g
        .resources
        .iter()
        .find(|o| matches!(&o.kind, ResourceKind::Mirror { mirror: x } if x == mirror));
    let Some(carrier) = carrier else {
        return Err(invalid(
            format!("{rk}.mirror"),
            format!("group `{}` has no `mirror` resource for `{mirror}`", g.name),
        ));
    };
    if !depends_on_transitively(g, &r.name, &carrier.name) {
        return Err(invalid(
            format!("{rk}.depends_on"),
            format!("must depend on `{}`, the mirror it mounts", carrier.name),
        ));
    }
    Ok(())
}

/// True if resource `from` in `g` depends on `on`, directly or through others.
fn depends_on_transitively(g: &GroupConfig, from: &str, on: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(r) = todo.pop() {
        if !seen.insert(r) {
            continue;
        }
        let Some(res) = g.resources.iter().find(|x| x.name == r) else {
            continue;
        };
        for d in &res.depends_on {
            if d == on {
                return true;
            }
            todo.push(d);
        }
    }
    false
}

/// A cluster key given in section `section` (`cluster`, `cluster[0]` of a witness):
/// either `key` (at least 16 characters) or `key_file`, not both.
pub(crate) fn check_key(
    key: Option<&str>,
    key_file: Option<&Path>,
    section: &str,
) -> Result<(), ConfigError> {
    match (key, key_file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{section}.key"),
            "set either key or key_file, not both",
        )),
        (None, None) => Err(invalid(
            format!("{section}.key"),
            "missing: set key or key_file",
        )),
        (Some(k), None) if k.len() < 16 => Err(invalid(
            format!("{section}.key"),
            "must be at least 16 characters",
        )),
        _ => Ok(()),
    }
}

/// The key bytes of a section checked by [`check_key`]: `key`, or the trimmed contents
/// of `key_file` (refused unless only its owner can read it).
pub(crate) fn key_bytes(
    key: Option<&str>,
    key_file: Option<&Path>,
    section: &str,
) -> Result<Vec<u8>, ConfigError> {
    match (key, key_file) {
        (Some(k), _) => Ok(k.as_bytes().to_vec()),
        (None, Some(f)) => secret::read(f).map(String::into_bytes).map_err(|e| {
            invalid(
                format!("{section}.key_file"),
                format!("{}: {e}", f.display()),
            )
        }),
        (None, None) => Err(invalid(format!("{section}.key"), "missing")),
    }
}

pub(crate) fn check_name(name: &str, key: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{name}` must be 1-48 characters of [A-Za-z0-9._-]"),
        ))
    }
}

fn check_ifname(name: &str, key: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(' ') {
        return Err(invalid(
            key,
            format!("`{name}` is not a valid interface name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
/// A test configuration (unit tests of `config::reload` and `cli::push`): two nodes on
/// paths hb1 and hb2, the TCP API, and group `web` with a process and its HTTP
/// quickcheck.
#[cfg(test)]
pub(crate) const TWO_NODES: &str = r#"
[cluster]
name = "t"
key = "0123456789abcdef"
[heartbeat]
paths = ["hb1", "hb2"]
[api]
tcp = "127.0.0.1:7000"
token = "token-0123456789abcdef"
[[node]]
name = "a"
priority = 1
addresses = { hb1 = "10.0.0.1", hb2 = "10.0.1.1" }
[[node]]
name = "b"
priority = 2
addresses = { hb1 = "10.0.0.2", hb2 = "10.0.1.2" }
[[group]]
name = "web"
[[group.resource]]
name = "http"
kind = "process"
command = ["httpd"]
quickcheck = { probe = "http", url = "http://127.0.0.1:8080/", interval = "2s" }
"#;

#[cfg(test)]
mod tests;

/// A `shared_disk` (`key`): an absolute path, an aligned lease sector the data does not
/// overlap, and lease timing that keeps two nodes off the disk.
fn check_shared_disk(
    key: &str,
    path: &Path,
    lease_offset: u64,
    data_offset: u64,
    kind: &ResourceKind,
) -> Result<(), ConfigError> {
    let sector = crate::lease::record::SECTOR as u64;
    if !path.is_absolute() {
        return Err(invalid(format!("{key}.path"), "must be an absolute path"));
    }
    if !lease_offset.is_multiple_of(sector) {
        return Err(invalid(
            format!("{key}.lease_offset"),
            "must be a multiple of 4096",
        ));
    }
    if data_offset < lease_offset.saturating_add(sector) {
        return Err(invalid(
            format!("{key}.data_offset"),
            "must be past the 4 KiB lease sector (lease_offset + 4096 or more)",
        ));
    }
    match kind.lease_timing().map(|t| t.validate()) {
        Some(Err(e)) => Err(invalid(key.to_string(), e.to_string())),
        _ => Ok(()),
    }
}
