//! The command line (clap derive): the daemon, the admin commands that talk to it
//! through the control API, config checking, the witness, the lab, the NBD server, benchmarks, and
//! the demo service.

pub mod follow;
pub mod generate;
pub mod plan;
pub mod push;
pub mod render;
pub mod user;
pub mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Tandem: high-availability failover for services, floating IPs and volumes.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
    /// Write log lines to this file, rotated by size (FILE.1, FILE.2, ...; four kept),
    /// instead of stderr or the journal.
    #[arg(long, global = true, env = "TANDEM_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// The size at which `--log-file` rotates.
    #[arg(long, global = true, default_value_t = crate::rotate::Policy::DEFAULT.max_bytes)]
    pub log_max_bytes: u64,
}

/// `tandem generate`: what the package carries, generated from these definitions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Generated {
    /// Shell completions: `tandem.bash`, `_tandem` (zsh), `tandem.fish`.
    Completions,
    /// Man pages: `tandem.1` and one per subcommand (`tandem-status.1`, ...).
    Man,
}

/// How admin commands reach the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The daemon's control socket.
    #[arg(long, env = "TANDEM_SOCKET", default_value = "/run/tandem/tandem.sock")]
    pub socket: PathBuf,
    /// Use the TCP API at HOST:PORT instead of the socket.
    #[arg(long, env = "TANDEM_API")]
    pub api: Option<String>,
    /// Bearer token for the TCP API.
    #[arg(long, env = "TANDEM_TOKEN")]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the config (default: the host name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Show nodes, heartbeat paths and groups as this node sees them.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show failover and switchover timelines, and optionally the events.
    History {
        #[command(flatten)]
        api: ApiArgs,
        /// Also print the events after this sequence number.
        #[arg(long)]
        events_since: Option<u64>,
    },
    /// Print the event stream: the events after --since, then (with --follow) each new
    /// one as it happens, one per line (`--json`: one JSON object per line).
    Events {
        /// Only events after this sequence number (default: the last 100 before now).
        #[arg(long)]
        since: Option<u64>,
        /// Keep printing new events until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move a group to another node by hand (stop top-down here, start bottom-up there).
    Switchover {
        group: String,
        /// Target node (default: the most preferred eligible other node).
        #[arg(long)]
        to: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Node administration.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Group administration.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Run a witness: a voter with no resources for one or more clusters (see
    /// docs/witness.example.toml).
    Witness {
        #[arg(long, short)]
        config: PathBuf,
        /// Validate the configuration (and read the key files), then exit; 2 if it is
        /// wrong.
        #[arg(long)]
        check: bool,
    },
    /// Power fencing by hand, like Pacemaker's stonith_admin: switch a node off
    /// through its BMC (`[node.fence]`: Redfish, then IPMI) and wait until the BMC
    /// reports the power off; `--on` unfences, `--status` reads the power state.
    /// Exit 0 when done, 10 when the node could NOT be fenced.
    Fence {
        /// The node, by its name in the config.
        node: String,
        #[arg(long, short)]
        config: PathBuf,
        /// Power off and wait for `Off` (the default).
        #[arg(long, conflicts_with_all = ["on", "status"])]
        off: bool,
        /// Power on and wait for `On` (unfence).
        #[arg(long, conflicts_with = "status")]
        on: bool,
        /// Read the power state only.
        #[arg(long)]
        status: bool,
    },
    /// A cluster of network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        cmd: crate::lab::LabCommand,
    },
    /// Replicated volumes: state, pause/resume, verify, resync, disconnect/connect,
    /// split-brain recovery.
    Mirror {
        #[command(subcommand)]
        cmd: MirrorCmd,
    },
    /// Block volumes over NBD.
    Nbd {
        #[command(subcommand)]
        cmd: NbdCmd,
    },
    /// Benchmarks that need no lab.
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// The appliance image's A/B boot slots (see image/ and README "Appliance image").
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// The web console's users (argon2 password hashes and roles, in the state
    /// directory's users.json).
    User {
        #[command(subcommand)]
        cmd: user::UserCmd,
    },
    /// API tokens with a role (viewer, operator, admin) for the TCP API and the console.
    Token {
        #[command(subcommand)]
        cmd: user::TokenCmd,
    },
    /// This node's web console address and its certificate's SHA-256 fingerprint (the
    /// self-signed certificate is made now if there is none yet); nothing without a
    /// `[console]` section.
    ConsoleCert {
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the configuration.
        #[arg(long)]
        node: String,
    },
    /// The appliance's console password (root on ttyS0 and tty1).
    ConsolePassword {
        #[command(subcommand)]
        cmd: ConsolePasswordCmd,
    },
    /// Write shell completions or man pages into DIR (for packaging).
    #[command(hide = true)]
    Generate { what: Generated, dir: PathBuf },
    /// The demo service the lab protects: HTTP that answers with the node's name.
    #[command(hide = true)]
    DemoService {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "TANDEM_NODE", default_value = "unknown")]
        name: String,
        /// Keep a visit counter (`/counter`) on the volume behind this NBD socket.
        /// Without this or --data-dir, a group's command takes its mirror's socket
        /// from TANDEM_NBD_SOCKET (which the daemon passes on).
        #[arg(long, conflicts_with = "data_dir")]
        nbd_socket: Option<PathBuf>,
        /// Keep the visit counter in a file in this directory (a mounted filesystem).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep the counter and the log on this disk every node sees (a group's
        /// `shared_disk`: the daemon passes it on as TANDEM_SHARED_DISK).
        #[arg(long, conflicts_with_all = ["nbd_socket", "data_dir"])]
        shared_disk: Option<PathBuf>,
        /// Where the data begins on the shared disk (TANDEM_SHARED_DISK_OFFSET).
        #[arg(long, env = "TANDEM_SHARED_DISK_OFFSET", default_value_t = 0)]
        shared_disk_offset: u64,
        /// Also append a record of its own to the write log every this many ms.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        self_write_ms: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NbdCmd {
    /// Serve a file or block device over NBD in the foreground (no peer).
    Serve {
        /// The file or block device to export.
        #[arg(long)]
        file: PathBuf,
        /// Listen on this Unix socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Listen on this TCP address (default 127.0.0.1:10809 when no --socket is given).
        #[arg(long)]
        tcp: Option<SocketAddr>,
        /// Export name (clients asking for the empty name get it too).
        #[arg(long, default_value = "")]
        name: String,
        /// Refuse writes.
        #[arg(long)]
        read_only: bool,
    },
}

#[cfg(feature = "bench")]
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Whole-tree GETBULK walk time of the SNMP agent vs net-snmp's snmpd.
    Snmp(crate::bench::snmp::SnmpBenchArgs),
    /// Write throughput of the NBD export vs nbdkit and qemu-nbd, with nbdcopy.
    Mirror(crate::bench::mirror::MirrorBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Move this node's groups away and keep new ones off it; with --wait, return once
    /// every group is handed over (a planned reboot waits for this).
    Standby {
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
        /// Only if the node is online: create this file, then put it in standby (a
        /// node already in standby is left as it is). The appliance's shutdown uses it
        /// so that the next boot brings back online only a node the reboot took away.
        #[arg(long, value_name = "FILE")]
        if_online_mark: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Undo standby.
    Online {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Suspend (on) or resume (off) monitoring and recovery of a group.
    Maintenance {
        group: String,
        state: OnOff,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Forget the group's failures in the restart window and lift its block on the
    /// node the command reaches (like `pcs resource cleanup`): it may run the group
    /// again at once. Blocks are per node: with --node, refused unless that is the node
    /// reached.
    Clear {
        group: String,
        /// The node to clear (default: the node reached).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `tandem mirror ...`: every action takes the mirror's name and optionally one peer
/// (default: every peer of this node's copy).
#[derive(Debug, Subcommand)]
pub enum MirrorCmd {
    /// Role, disk states, connections, out-of-sync bytes, lag and resync progress.
    Status {
        /// Only this mirror.
        mirror: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop replicating (changes are tracked in the bitmap).
    Pause(MirrorTarget),
    /// Replicate again; the peer catches up from the bitmap by itself.
    Resume(MirrorTarget),
    /// Online verify by checksums; blocks that differ are resynced.
    Verify {
        #[command(flatten)]
        target: MirrorTarget,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Resync to the peer.
    Resync {
        #[command(flatten)]
        target: MirrorTarget,
        /// Every used block, not only the bitmap (a replaced disk).
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Drop the replication link and stay disconnected.
    Disconnect(MirrorTarget),
    /// Connect again.
    Connect {
        #[command(flatten)]
        target: MirrorTarget,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Resolve a split brain: the copy on --keep survives; every copy in split brain
    /// with it saves its changed blocks to a dump, discards them and is resynced fully.
    /// Runs on any node holding a copy in the split brain.
    Resolve {
        mirror: String,
        /// The node whose copy to keep.
        #[arg(long)]
        keep: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Size the WAN link: the write rate over time from this node's history (peak,
    /// percentiles, daily volume, hour of day) and the smallest link that keeps the lag
    /// under a target.
    Plan(PlanArgs),
    /// List this node's split-brain dumps (the blocks a discarded copy had written
    /// apart), or with --output save one to a file.
    SplitBrainDump {
        mirror: String,
        /// Write the dump (the newest, or --name) to this file.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Which dump (a file name from the list); default the newest.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move this node's copy's metadata between the state directory (external) and
    /// the end of the backing (internal), keeping every byte of data, the bitmaps and
    /// the generations. Runs without the daemon: refused while the mirror is open.
    /// Then set `metadata` in the config to match.
    ConvertMetadata {
        mirror: String,
        #[arg(long, value_enum)]
        to: MetadataTarget,
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name in the config (default: the host name).
        #[arg(long)]
        node: Option<String>,
    },
}

/// Where `tandem mirror convert-metadata` moves the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetadataTarget {
    /// To the end of the backing.
    Internal,
    /// To files in the state directory.
    External,
}

/// `tandem mirror plan`: what the link must achieve (see `mirror::plan::Target`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    pub mirror: String,
    /// The lag to stay under (30s, 2m, ...).
    #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub lag: std::time::Duration,
    /// In this percentage of minutes.
    #[arg(long, default_value_t = crate::mirror::plan::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// The share of the link that carries data (TCP/IP and framing take the rest).
    #[arg(long, default_value_t = crate::mirror::plan::DEFAULT_EFFICIENCY)]
    pub efficiency: f64,
    /// Divide the writes by this compression ratio (a measured one; none by default).
    #[arg(long)]
    pub compression: Option<f64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Which mirror (and peer) a `tandem mirror` action applies to.
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorTarget {
    pub mirror: String,
    /// Only the link to this peer node.
    #[arg(long)]
    pub peer: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `--wait` on a long mirror operation: poll until it is done, with progress.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WaitArgs {
    /// Wait until the operation is done (exit 0), failed (1) or timed out (7), showing
    /// progress on standard error.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 3600, requires = "wait")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Parse and validate a config file; exit 2 if it is wrong.
    Check { file: PathBuf },
    /// Write a commented configuration for N nodes with a fresh random key (to
    /// stdout, or to --output with mode 0600).
    Init {
        /// How many nodes (n1, n2, ...).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=crate::config::init::MAX_NODES as i64))]
        nodes: u8,
        /// The cluster's name.
        #[arg(long, default_value = "tandem")]
        cluster: String,
        /// Write the file here (mode 0600); refused if it exists.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Copy a config file to every node it names (over each node's TCP API: its
    /// heartbeat address, the port of `[api] tcp`); each node validates it, writes it
    /// (mode 0600) and reloads it. Exit 0 only when every node took it and every
    /// digest is the file's.
    Push {
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
        /// The token the nodes run with (default: `[api] token` of the file).
        #[arg(long, env = "TANDEM_TOKEN")]
        token: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon re-read its config file (as SIGHUP does): checks and the API
    /// token change at once; what needs a restart is named. A file that does not pass
    /// `config check` is refused and nothing changes.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// The configuration file of a packaged install.
pub const DEFAULT_CONFIG: &str = "/etc/tandem/tandem.toml";

#[derive(Debug, Subcommand)]
pub enum ConsolePasswordCmd {
    /// Set a new password, read from standard input (not echoed on a terminal): its
    /// hash goes to the data partition and /etc/passwd.
    Set {
        #[arg(long, default_value = crate::image::console::HASH_FILE)]
        file: PathBuf,
        #[arg(long, default_value = crate::image::console::PASSWD)]
        passwd: PathBuf,
    },
    /// Print the hash of a password read from standard input: the line to seed the
    /// data partition's `console-password` with before the first boot.
    Hash,
    /// Boot: root's password in /etc/passwd from the data partition's hash; at the
    /// first boot without one, make a password, store its hash and show it once.
    #[command(hide = true)]
    Boot {
        #[arg(long, default_value = crate::image::console::HASH_FILE)]
        file: PathBuf,
        #[arg(long, default_value = crate::image::console::PASSWD)]
        passwd: PathBuf,
    },
}

/// `tandem image update`.
#[derive(Debug, clap::Args)]
pub struct ImageUpdateArgs {
    /// An image file, or the URL of one.
    pub source: String,
    /// FILE only: the ESP holding the slots (a URL: the daemon's `[image] esp`).
    #[arg(long, default_value = crate::image::DEFAULT_ESP)]
    pub esp: PathBuf,
    /// FILE only: the running slot (default: `tandem.slot=` of the kernel command
    /// line).
    #[arg(long)]
    pub slot: Option<String>,
    /// FILE only: the public keys trusted for updates (hex, one per line).
    #[arg(long, default_value = crate::image::sign::TRUSTED_KEYS)]
    pub trusted_keys: PathBuf,
    /// URL only: give up waiting after this many seconds (the daemon goes on).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Show both boot slots and which one boots next.
    Status {
        #[arg(long, default_value = crate::image::DEFAULT_ESP)]
        esp: PathBuf,
    },
    /// Write the inactive slot from an image (tandem.img.zst as distributed, or the raw
    /// tandem.img) and try it next boot. The image must carry a valid signature
    /// (SOURCE.sig) by a trusted key. A FILE is written here; an http:// or https://
    /// URL is handed to the daemon (--socket, or --api for another node), which
    /// downloads, checks and writes it while this shows its progress.
    Update(ImageUpdateArgs),
    /// Make a signing key for images: the secret to --output (mode 0600, never over an
    /// existing file), the public key beside it with the extension .pub, and to stdout.
    Keygen {
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Boot the other slot next (back to the previous version); refused if that slot
    /// failed to boot. Takes effect at the next reboot.
    Rollback {
        #[arg(long, default_value = crate::image::DEFAULT_ESP)]
        esp: PathBuf,
        /// The running slot (default: `tandem.slot=` of the kernel command line).
        #[arg(long)]
        slot: Option<String>,
    },
    /// Print the public key (hex) of a secret signing key.
    PublicKey {
        #[arg(long)]
        key: PathBuf,
    },
    /// Sign an image file with a secret key from `image keygen`: writes FILE.sig.
    Sign {
        /// The secret key file (mode 0600).
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Mark the running slot good (optionally once the daemon answers, within --wait s).
    Bless {
        #[arg(long, default_value = crate::image::DEFAULT_ESP)]
        esp: PathBuf,
        #[arg(long)]
        slot: Option<String>,
        /// Wait up to this many seconds for the daemon's API to answer first; fail if not.
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Early boot: count this boot attempt (legacy BIOS) and point SYSLINUX at what
    /// boots next.
    #[command(hide = true)]
    BootCheck {
        #[arg(long, default_value = crate::image::DEFAULT_ESP)]
        esp: PathBuf,
        #[arg(long)]
        slot: Option<String>,
        #[arg(long, value_enum)]
        firmware: Option<crate::image::Firmware>,
    },
    /// Print the one-node configuration used when the data partition has none.
    #[command(hide = true)]
    DefaultConfig {
        #[arg(long)]
        node: String,
        /// This node's heartbeat address (the first NIC's).
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Rewrite syslinux.cfg from the loader entries of a (staged) ESP.
    #[command(hide = true)]
    SyncLoader {
        #[arg(long)]
        esp: PathBuf,
    },
}
